//! A synchronous MCP client session over one [`Transport`].
//!
//! Threads, no async runtime: a *reader* thread decodes every message the server
//! sends and routes responses by id to the caller waiting for them (a map
//! id -> channel), hands `notifications/progress` to the caller whose request
//! id is the progress token, answers the server's `ping`, and counts
//! notifications; a
//! *writer* thread owns the write half so that no caller ever blocks on a full
//! pipe past its deadline. Callers on any number of threads share one session
//! (`&self`), each waiting on its own channel with its own deadline.
//!
//! When the stream ends or carries something that is not JSON-RPC, every pending
//! call fails with the reason and the session is dead (later calls fail at once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{
    bounded, Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError,
};
use serde_json::{json, Map, Value};

use super::error::McpError;
use super::server::modern_request_meta;
use super::stdio::CloseOutcome;
use super::transport::{Transport, TransportGuard};
use super::types::{preview, InitializeResult, Tool, ToolResult};
use super::{
    Era, LATEST_LEGACY_PROTOCOL_VERSION, LATEST_PROTOCOL_VERSION, LEGACY_PROTOCOL_VERSIONS,
    MODERN_PROTOCOL_VERSIONS, SUPPORTED_PROTOCOL_VERSIONS,
};
use crate::framing::{encode_frame, write_encoded, FrameError, FrameReader, Framing};
use crate::jsonrpc as codes;

/// Default deadline of the `server/discover` probe that tells a modern server
/// from a legacy one ([`Session::connect`]): long enough for a server that is
/// still starting (a cold `node` answers in well under a second), short enough
/// that a legacy server that ignores the probe delays the fallback to
/// `initialize` by no more than this.
pub const DEFAULT_DISCOVER_TIMEOUT: Duration = Duration::from_secs(3);

/// Which MCP era and revision a client session should speak.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolChoice {
    /// Probe with `server/discover`; stay modern if the server is, else fall
    /// back to `initialize` (the default).
    Auto,
    /// The newest modern revision only (no fallback).
    Modern,
    /// The legacy `initialize` handshake only (offering
    /// [`SessionOptions::protocol_version`]).
    Legacy,
    /// Exactly this revision (its era decides how it is spoken).
    Version(String),
}

impl std::str::FromStr for ProtocolChoice {
    type Err = String;
    /// `auto`, `modern`, `legacy` or a revision such as `2025-06-18`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ProtocolChoice::Auto),
            "modern" => Ok(ProtocolChoice::Modern),
            "legacy" => Ok(ProtocolChoice::Legacy),
            v if SUPPORTED_PROTOCOL_VERSIONS.contains(&v) => {
                Ok(ProtocolChoice::Version(v.to_string()))
            }
            other => Err(format!(
                "{other:?}: expected auto, modern, legacy or one of {}",
                SUPPORTED_PROTOCOL_VERSIONS.join(", ")
            )),
        }
    }
}

/// Frames queued for the writer thread before callers wait (with their deadline).
const WRITE_QUEUE_DEPTH: usize = 256;
/// On close: how long the writer gets to flush what is queued and close the write half.
const WRITER_FLUSH_GRACE: Duration = Duration::from_millis(500);
/// On close: how long the reader gets to see end of file once the peer was ended.
const READER_EXIT_GRACE: Duration = Duration::from_secs(2);
/// When the stream ends: how long to wait for the server's exit status and stderr
/// to put them into the error message.
const DIAGNOSTICS_WAIT: Duration = Duration::from_millis(300);
/// How much of an unparsable frame is quoted in the error.
const GARBAGE_PREVIEW_LEN: usize = 120;
/// Longest single wait of a call that watches a stop flag: how late a set
/// flag is noticed.
const STOP_POLL: Duration = crate::vsock::STOP_POLL;

/// A caller's stop flag (set by SIGINT/SIGTERM), if it gave one.
type Stop<'a> = Option<&'a AtomicBool>;

fn stopped(stop: Stop<'_>) -> bool {
    stop.is_some_and(|s| s.load(Ordering::Relaxed))
}

/// When the next wait before `deadline` must end to look at `stop`.
fn wake_at(deadline: Instant, stop: Stop<'_>) -> Instant {
    match stop {
        Some(_) => deadline.min(Instant::now() + STOP_POLL),
        None => deadline,
    }
}

/// Settings of a session; `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// What [`Session::connect`] speaks (default [`ProtocolChoice::Auto`]).
    pub protocol: ProtocolChoice,
    /// Revision offered in `initialize` (default
    /// [`LATEST_LEGACY_PROTOCOL_VERSION`]); [`ProtocolChoice::Version`] of a
    /// legacy revision overrides it.
    pub protocol_version: String,
    /// Deadline of the `server/discover` probe of [`ProtocolChoice::Auto`]
    /// (default [`DEFAULT_DISCOVER_TIMEOUT`]).
    pub discover_timeout: Duration,
    /// `clientInfo.name` (default `ukload`).
    pub client_name: String,
    /// `clientInfo.version` (default the crate version).
    pub client_version: String,
    /// Deadline of the `initialize` request (default 10 s: a cold `node` start on a
    /// loaded machine takes seconds).
    pub init_timeout: Duration,
    /// Deadline of each `tools/list` page (default 10 s).
    pub request_timeout: Duration,
    /// Most `tools/list` pages followed through `nextCursor` (default 100).
    pub max_list_pages: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            protocol: ProtocolChoice::Auto,
            protocol_version: LATEST_LEGACY_PROTOCOL_VERSION.to_string(),
            discover_timeout: DEFAULT_DISCOVER_TIMEOUT,
            client_name: "ukload".to_string(),
            client_version: env!("CARGO_PKG_VERSION").to_string(),
            init_timeout: crate::mcp::DEFAULT_REQUEST_TIMEOUT,
            request_timeout: crate::mcp::DEFAULT_REQUEST_TIMEOUT,
            max_list_pages: 100,
        }
    }
}

/// Counters of what the session saw; for tests, reports and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Requests written (including `initialize`).
    pub requests_sent: u64,
    /// Notifications received from the server (logging, progress, ...).
    pub notifications_received: u64,
    /// Server-to-client requests answered (`ping` with `{}`, others with -32601).
    pub server_requests_answered: u64,
    /// Replies to requests that had already timed out (or duplicate replies): dropped.
    pub late_replies_dropped: u64,
    /// Replies whose id this session never issued: dropped.
    pub unknown_replies: u64,
    /// `notifications/cancelled` sent after a deadline.
    pub cancellations_sent: u64,
}

#[derive(Default)]
struct Counters {
    requests_sent: AtomicU64,
    notifications_received: AtomicU64,
    server_requests_answered: AtomicU64,
    late_replies_dropped: AtomicU64,
    unknown_replies: AtomicU64,
    cancellations_sent: AtomicU64,
}

/// What the reader hands a waiting caller.
enum Reply {
    Result(Value),
    Error {
        code: i64,
        message: String,
        data: Option<Value>,
    },
    Failed(McpError),
}

/// A registered request: its id, where its reply comes, and where its
/// progress comes when the caller watches it.
type Registered = (u64, Receiver<Reply>, Option<Receiver<Progress>>);

/// A request waiting for its answer.
struct Pending {
    reply: Sender<Reply>,
    /// Where `notifications/progress` for this request go (its progress token
    /// is its id), for a caller that watches progress.
    progress: Option<Sender<Progress>>,
}

/// Progress notifications queued per call before the reader drops newer ones
/// (a caller that does not keep up only misses intermediate steps).
const PROGRESS_QUEUE_DEPTH: usize = 64;

/// One `notifications/progress` of a call.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Progress so far (increases with every notification).
    pub progress: f64,
    /// The total, when the server knows it.
    pub total: Option<f64>,
    /// What the server says it is doing.
    pub message: Option<String>,
}

/// How a `tools/call` waits ([`Session::call_tool_with_progress`]).
#[derive(Clone, Copy, Debug)]
pub struct CallOptions<'a> {
    /// Deadline of the call; with `progress_resets_timeout`, the longest
    /// silence between two progress notifications.
    pub timeout: Duration,
    /// Each `notifications/progress` of the call restarts `timeout` (the spec
    /// allows it); `max_total` still bounds the call.
    pub progress_resets_timeout: bool,
    /// Hard bound of the whole call, whatever the progress (`None`: only
    /// `timeout`).
    pub max_total: Option<Duration>,
    /// Gives up within [`crate::vsock::STOP_POLL`] of this being set.
    pub stop: Option<&'a AtomicBool>,
}

impl CallOptions<'_> {
    /// A deadline of `timeout`, no reset on progress, no stop flag.
    pub fn new(timeout: Duration) -> Self {
        CallOptions {
            timeout,
            progress_resets_timeout: false,
            max_total: None,
            stop: None,
        }
    }
}

/// What a request watching its progress carries into the wait.
struct ProgressWatch<'a, 'b> {
    options: &'a CallOptions<'b>,
    on_progress: &'a mut dyn FnMut(&Progress),
}

enum WriterCmd {
    Frame(Vec<u8>),
    Close,
}

struct Routing {
    /// Next request id; ids below it were issued.
    next_id: u64,
    pending: HashMap<u64, Pending>,
    /// Why the session is dead, once it is.
    dead: Option<McpError>,
    /// Last reply with an id we never issued, for timeout hints.
    last_unknown_id: Option<Value>,
    /// Last error the server sent with a null id (it could not tell which request).
    last_idless_error: Option<String>,
}

struct Shared {
    peer: String,
    framing: Framing,
    out: Sender<WriterCmd>,
    routing: Mutex<Routing>,
    counters: Counters,
    guard: Option<Arc<dyn TransportGuard>>,
}

impl Shared {
    /// The state of a new session: no request issued yet (ids start at 1).
    fn new(
        peer: String,
        framing: Framing,
        out: Sender<WriterCmd>,
        guard: Option<Arc<dyn TransportGuard>>,
    ) -> Shared {
        Shared {
            peer,
            framing,
            out,
            routing: Mutex::new(Routing {
                next_id: 1,
                pending: HashMap::new(),
                dead: None,
                last_unknown_id: None,
                last_idless_error: None,
            }),
            counters: Counters::default(),
            guard,
        }
    }

    fn routing(&self) -> MutexGuard<'_, Routing> {
        self.routing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the session dead (first reason wins) and fails every pending call.
    fn fail_all(&self, reason: McpError) {
        let pending = {
            let mut r = self.routing();
            if r.dead.is_none() {
                r.dead = Some(reason);
            }
            std::mem::take(&mut r.pending)
        };
        let reason = self.routing().dead.clone().expect("set above");
        for (_, p) in pending {
            let _ = p.reply.try_send(Reply::Failed(reason.clone()));
        }
    }

    fn closed(&self, reason: impl Into<String>) -> McpError {
        McpError::Closed {
            peer: self.peer.clone(),
            reason: reason.into(),
        }
    }

    fn protocol(&self, detail: impl Into<String>) -> McpError {
        McpError::Protocol {
            peer: self.peer.clone(),
            detail: detail.into(),
        }
    }

    fn encode(&self, msg: &Value) -> Result<Vec<u8>, McpError> {
        let payload = serde_json::to_vec(msg)
            .map_err(|e| self.protocol(format!("encoding a message: {e}")))?;
        encode_frame(self.framing, &payload).map_err(|e| {
            let e = match e {
                FrameError::Io(e) => e,
                e => std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
            };
            McpError::io(format!("framing a message for {}", self.peer), e)
        })
    }

    /// Queues a frame for the writer, waiting for room until `deadline` (or
    /// until `stop` is set).
    fn send_frame(
        &self,
        frame: Vec<u8>,
        deadline: Instant,
        what: &str,
        stop: Stop<'_>,
    ) -> Result<(), McpError> {
        if let Some(dead) = self.routing().dead.clone() {
            return Err(dead);
        }
        let start = Instant::now();
        let mut cmd = WriterCmd::Frame(frame);
        loop {
            if stopped(stop) {
                return Err(McpError::Interrupted {
                    method: what.to_string(),
                    after: start.elapsed(),
                });
            }
            match self.out.send_deadline(cmd, wake_at(deadline, stop)) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Timeout(back)) if Instant::now() < deadline => cmd = back,
                Err(SendTimeoutError::Timeout(_)) => {
                    return Err(self.closed(format!(
                        "the server is not reading its input: could not queue {what} before \
                         the deadline"
                    )))
                }
                Err(SendTimeoutError::Disconnected(_)) => {
                    return Err(self
                        .routing()
                        .dead
                        .clone()
                        .unwrap_or_else(|| self.closed("the writer has stopped")))
                }
            }
        }
    }

    fn timeout_hint(&self) -> Option<String> {
        let r = self.routing();
        let mut hints = Vec::new();
        let unknown = self.counters.unknown_replies.load(Ordering::Relaxed);
        if let Some(id) = &r.last_unknown_id {
            hints.push(format!("the server sent {unknown} reply(ies) with ids this client never issued (last id: {id})"));
        }
        if let Some(err) = &r.last_idless_error {
            hints.push(format!(
                "the server reported an error it could not tie to a request: {err}"
            ));
        }
        (!hints.is_empty()).then(|| hints.join("; "))
    }

    fn stream_ended(&self, why: &str) -> McpError {
        let mut reason = why.to_string();
        if let Some(diag) = self
            .guard
            .as_ref()
            .and_then(|g| g.diagnostics(DIAGNOSTICS_WAIT))
        {
            reason.push_str("; ");
            reason.push_str(&diag);
        }
        self.closed(reason)
    }
}

struct Threads {
    reader: Option<(JoinHandle<()>, Receiver<()>)>,
    writer: Option<(JoinHandle<()>, Receiver<()>)>,
    outcome: Option<CloseOutcome>,
}

/// An initialized MCP client session. `Send + Sync`: share it (e.g. in an `Arc`)
/// and call from many threads; every call has its own deadline.
pub struct Session {
    shared: Arc<Shared>,
    server: InitializeResult,
    options: SessionOptions,
    threads: Mutex<Threads>,
    /// The era spoken, once negotiated (legacy until then).
    era: Era,
}

impl Session {
    /// Starts the reader and writer threads on `transport`, performs `initialize`
    /// (offering `options.protocol_version`), checks the revision the server picked
    /// is one of [`SUPPORTED_PROTOCOL_VERSIONS`], then sends `notifications/initialized`.
    ///
    /// On any failure the transport is closed (a stdio child is ended and reaped).
    pub fn initialize(transport: Transport, options: SessionOptions) -> Result<Session, McpError> {
        Session::initialize_with(transport, options, None)
    }

    /// [`Session::initialize`] that gives up with [`McpError::Interrupted`]
    /// within [`crate::vsock::STOP_POLL`] of `stop` being set (by
    /// SIGINT/SIGTERM); the transport is then ended at once ([`Session::abort`]).
    pub fn initialize_interruptible(
        transport: Transport,
        options: SessionOptions,
        stop: &AtomicBool,
    ) -> Result<Session, McpError> {
        Session::initialize_with(transport, options, Some(stop))
    }

    /// Starts a session in the era `options.protocol` asks for (see
    /// [`ProtocolChoice`]): by default it probes with `server/discover`
    /// (deadline `options.discover_timeout`) and stays modern (2026-07-28:
    /// no handshake, `_meta` on every request) when the answer is a discover
    /// result or a modern refusal naming a version both sides speak; any other
    /// error or no answer falls back to the legacy `initialize` handshake on the
    /// same connection. The era is decided once, for the whole session.
    ///
    /// On any failure the transport is closed (a stdio child is ended and reaped).
    pub fn connect(transport: Transport, options: SessionOptions) -> Result<Session, McpError> {
        Session::connect_with(transport, options, None)
    }

    /// [`Session::connect`] that gives up with [`McpError::Interrupted`]
    /// within [`crate::vsock::STOP_POLL`] of `stop` being set.
    pub fn connect_interruptible(
        transport: Transport,
        options: SessionOptions,
        stop: &AtomicBool,
    ) -> Result<Session, McpError> {
        Session::connect_with(transport, options, Some(stop))
    }

    fn connect_with(
        transport: Transport,
        options: SessionOptions,
        stop: Stop<'_>,
    ) -> Result<Session, McpError> {
        let session = Session::start(transport, options)?;
        let negotiated = session.negotiate(stop);
        session.finish_setup(negotiated)
    }

    /// Keeps the negotiated era and server, or closes the session (aborts
    /// it once interrupted) and returns the negotiation's error.
    fn finish_setup(
        mut self,
        negotiated: Result<(Era, InitializeResult), McpError>,
    ) -> Result<Session, McpError> {
        match negotiated {
            Ok((era, server)) => {
                self.era = era;
                self.server = server;
                Ok(self)
            }
            Err(e) => {
                // Report the handshake failure, not a secondary close error.
                let _ = if e.is_interrupted() {
                    self.abort()
                } else {
                    self.close()
                };
                Err(e)
            }
        }
    }

    /// Decides the era per `options.protocol`.
    fn negotiate(&self, stop: Stop<'_>) -> Result<(Era, InitializeResult), McpError> {
        let legacy = |offer: &str| self.handshake(offer, stop).map(|s| (Era::Legacy, s));
        match &self.options.protocol {
            ProtocolChoice::Legacy => legacy(&self.options.protocol_version),
            ProtocolChoice::Version(v) if Era::of(v) == Some(Era::Legacy) => legacy(v),
            ProtocolChoice::Version(v) => self.discover(v, true, stop),
            ProtocolChoice::Modern => self.discover(LATEST_PROTOCOL_VERSION, true, stop),
            ProtocolChoice::Auto => match self.discover(LATEST_PROTOCOL_VERSION, false, stop)? {
                (Era::Legacy, _) => legacy(&self.options.protocol_version),
                modern => Ok(modern),
            },
        }
    }

    /// The `server/discover` probe. `forced`: modern or nothing (every failure
    /// is an error). Otherwise `Ok((Era::Legacy, _))` means "fall back to
    /// `initialize`".
    fn discover(
        &self,
        version: &str,
        forced: bool,
        stop: Stop<'_>,
    ) -> Result<(Era, InitializeResult), McpError> {
        let legacy = || Ok((Era::Legacy, InitializeResult::default()));
        let timeout = if forced {
            self.options.init_timeout
        } else {
            self.options.discover_timeout
        };
        let mut version = version.to_string();
        // One retry with a version the server named as supported.
        for _ in 0..2 {
            let params = json!({"_meta": self.request_meta(&version)});
            let answer =
                self.request_inner("server/discover", Some(params), timeout, false, stop, None);
            let server_versions = match answer {
                Ok(result) => {
                    check_result_type(&result).map_err(|e| self.shared.protocol(e))?;
                    let listed = string_list(result.get("supportedVersions"));
                    if listed.contains(&version) {
                        let server = InitializeResult::from_discover(result, &version)
                            .map_err(|e| self.shared.protocol(e))?;
                        return Ok((Era::Modern, server));
                    }
                    listed
                }
                Err(McpError::Rpc {
                    code: codes::UNSUPPORTED_PROTOCOL_VERSION,
                    data,
                    ..
                }) => string_list(data.as_ref().and_then(|d| d.get("supported"))),
                Err(e @ (McpError::Rpc { .. } | McpError::Timeout { .. })) if !forced => {
                    // Not a modern server: a legacy one refused or ignored the probe.
                    let _ = e;
                    return legacy();
                }
                Err(e) => return Err(e),
            };
            match server_versions
                .iter()
                .rev()
                .find(|v| MODERN_PROTOCOL_VERSIONS.contains(&v.as_str()))
            {
                Some(v) if *v != version => version = v.clone(),
                _ if !forced
                    && server_versions
                        .iter()
                        .any(|v| LEGACY_PROTOCOL_VERSIONS.contains(&v.as_str())) =>
                {
                    return legacy()
                }
                _ => {
                    return Err(McpError::NoCommonVersion {
                        server_supports: server_versions,
                        supported: if forced {
                            &MODERN_PROTOCOL_VERSIONS
                        } else {
                            &SUPPORTED_PROTOCOL_VERSIONS
                        },
                    })
                }
            }
        }
        Err(self.shared.protocol(format!(
            "server/discover: the server refused protocol {version} it had just listed as supported"
        )))
    }

    /// The `_meta` of a modern request: version, capabilities (none), identity.
    fn request_meta(&self, version: &str) -> Value {
        Value::Object(modern_request_meta(
            version,
            &self.options.client_name,
            &self.options.client_version,
        ))
    }

    fn initialize_with(
        transport: Transport,
        options: SessionOptions,
        stop: Stop<'_>,
    ) -> Result<Session, McpError> {
        let session = Session::start(transport, options)?;
        let offer = session.options.protocol_version.clone();
        let negotiated = session.handshake(&offer, stop).map(|s| (Era::Legacy, s));
        session.finish_setup(negotiated)
    }

    /// Starts the writer and reader threads on `transport` (no handshake
    /// yet); if one cannot start, what did start is closed.
    fn start(transport: Transport, options: SessionOptions) -> Result<Session, McpError> {
        let Transport {
            reader,
            writer,
            framing,
            peer,
            guard,
        } = transport;
        let (out_tx, out_rx) = bounded(WRITE_QUEUE_DEPTH);
        let shared = Arc::new(Shared::new(peer, framing, out_tx, guard));
        let mut threads = Threads {
            reader: None,
            writer: None,
            outcome: None,
        };
        let spawn_err = |what: &str, e| {
            McpError::io(
                format!("starting the MCP {what} thread for {}", shared.peer),
                e,
            )
        };

        let s = Arc::clone(&shared);
        match spawn_io_thread("mcp-writer", move || writer_loop(&s, writer, out_rx)) {
            Ok(w) => threads.writer = Some(w),
            Err(e) => {
                let err = spawn_err("writer", e);
                let session = Session::before_handshake(shared, options, threads);
                let _ = session.close();
                return Err(err);
            }
        }

        let s = Arc::clone(&shared);
        let reader_err = match spawn_io_thread("mcp-reader", move || reader_loop(&s, reader)) {
            Ok(r) => {
                threads.reader = Some(r);
                None
            }
            Err(e) => Some(spawn_err("reader", e)),
        };
        let session = Session::before_handshake(shared, options, threads);
        match reader_err {
            None => Ok(session),
            Some(err) => {
                let _ = session.close();
                Err(err)
            }
        }
    }

    /// A session whose handshake has not happened: no server information,
    /// legacy until the server shows otherwise.
    fn before_handshake(shared: Arc<Shared>, options: SessionOptions, threads: Threads) -> Session {
        Session {
            shared,
            server: InitializeResult::default(),
            options,
            threads: Mutex::new(threads),
            era: Era::Legacy,
        }
    }

    fn handshake(&self, offer: &str, stop: Stop<'_>) -> Result<InitializeResult, McpError> {
        let params = json!({
            "protocolVersion": offer,
            "capabilities": {},
            "clientInfo": {"name": self.options.client_name, "version": self.options.client_version},
        });
        let raw = self.request_inner(
            "initialize",
            Some(params),
            self.options.init_timeout,
            false,
            stop,
            None,
        )?;
        let server = InitializeResult::from_value(raw).map_err(|e| self.shared.protocol(e))?;
        if !LEGACY_PROTOCOL_VERSIONS.contains(&server.protocol_version.as_str()) {
            return Err(McpError::UnsupportedVersion {
                offered: offer.to_string(),
                got: server.protocol_version,
                supported: &LEGACY_PROTOCOL_VERSIONS,
            });
        }
        self.notify_with("notifications/initialized", None, stop)?;
        Ok(server)
    }

    /// What the server said in `initialize` (its chosen revision, name, capabilities).
    pub fn server(&self) -> &InitializeResult {
        &self.server
    }

    /// The negotiated protocol revision.
    pub fn protocol_version(&self) -> &str {
        &self.server.protocol_version
    }

    /// The era spoken: modern (2026-07-28, `_meta` on every request) or legacy.
    pub fn era(&self) -> Era {
        self.era
    }

    /// Whether the server declared capability `name` (e.g. `tools`).
    pub fn server_has(&self, name: &str) -> bool {
        self.server
            .capabilities
            .get(name)
            .is_some_and(|c| !c.is_null())
    }

    fn require_tools(&self) -> Result<(), McpError> {
        if self.server_has("tools") {
            Ok(())
        } else {
            Err(McpError::NotOffered {
                peer: self.shared.peer.clone(),
                capability: "tools",
            })
        }
    }

    /// Description of the peer used in errors.
    pub fn peer(&self) -> &str {
        &self.shared.peer
    }

    /// The server's pid, for a stdio transport.
    pub fn server_pid(&self) -> Option<u32> {
        self.shared.guard.as_ref().and_then(|g| g.pid())
    }

    /// What a stdio server wrote on stderr so far (the last 64 KiB).
    pub fn server_stderr(&self) -> Option<String> {
        self.shared.guard.as_ref().and_then(|g| g.stderr_tail())
    }

    /// Whether calls can still be made (not closed, stream not ended).
    pub fn is_alive(&self) -> bool {
        self.shared.routing().dead.is_none()
    }

    /// Counters of what the session saw.
    pub fn stats(&self) -> SessionStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SessionStats {
            requests_sent: get(&c.requests_sent),
            notifications_received: get(&c.notifications_received),
            server_requests_answered: get(&c.server_requests_answered),
            late_replies_dropped: get(&c.late_replies_dropped),
            unknown_replies: get(&c.unknown_replies),
            cancellations_sent: get(&c.cancellations_sent),
        }
    }

    /// Lists the server's tools, following `nextCursor` for at most
    /// `options.max_list_pages` pages, each with `options.request_timeout`.
    pub fn list_tools(&self) -> Result<Vec<Tool>, McpError> {
        self.list_tools_with(None)
    }

    /// [`Session::list_tools`] that gives up with [`McpError::Interrupted`]
    /// within [`crate::vsock::STOP_POLL`] of `stop` being set.
    pub fn list_tools_interruptible(&self, stop: &AtomicBool) -> Result<Vec<Tool>, McpError> {
        self.list_tools_with(Some(stop))
    }

    fn list_tools_with(&self, stop: Stop<'_>) -> Result<Vec<Tool>, McpError> {
        self.require_tools()?;
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..self.options.max_list_pages {
            let params = cursor.as_ref().map(|c| json!({"cursor": c}));
            let page = self.request_inner(
                "tools/list",
                params,
                self.options.request_timeout,
                true,
                stop,
                None,
            )?;
            let list = page.get("tools").and_then(Value::as_array).ok_or_else(|| {
                self.shared.protocol(format!(
                    "tools/list result has no tools array: {}",
                    preview(&page)
                ))
            })?;
            for entry in list {
                tools.push(
                    Tool::from_value(entry)
                        .map_err(|e| self.shared.protocol(format!("tools/list: {e}")))?,
                );
            }
            match page.get("nextCursor") {
                None | Some(Value::Null) => return Ok(tools),
                Some(Value::String(next)) => cursor = Some(next.clone()),
                Some(other) => {
                    return Err(self.shared.protocol(format!(
                        "tools/list nextCursor is not a string: {}",
                        preview(other)
                    )))
                }
            }
        }
        Err(self.shared.protocol(format!(
            "tools/list still had a nextCursor after {} pages; giving up",
            self.options.max_list_pages
        )))
    }

    /// Calls tool `name` with `args` (an object, or `Value::Null` for none).
    ///
    /// `Ok` with `is_error == true` is a tool that ran and failed; an unknown tool or
    /// bad arguments is `Err(McpError::Rpc { code: -32602, .. })`. On the deadline a
    /// `notifications/cancelled` is sent and `Err(McpError::Timeout)` returned; the
    /// session stays usable and a late reply is dropped. The request carries a
    /// `progressToken` (its id); progress notifications are counted only.
    pub fn call_tool(
        &self,
        name: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<ToolResult, McpError> {
        self.call_tool_with_progress(name, args, &CallOptions::new(timeout), &mut |_| {})
    }

    /// [`Session::call_tool`] that gives up within [`crate::vsock::STOP_POLL`]
    /// of `stop` being set (by SIGINT/SIGTERM): the request is cancelled with
    /// `notifications/cancelled` and `Err(McpError::Interrupted)` returned.
    pub fn call_tool_interruptible(
        &self,
        name: &str,
        args: Value,
        timeout: Duration,
        stop: &AtomicBool,
    ) -> Result<ToolResult, McpError> {
        let options = CallOptions {
            stop: Some(stop),
            ..CallOptions::new(timeout)
        };
        self.call_tool_with_progress(name, args, &options, &mut |_| {})
    }

    /// [`Session::call_tool`] with `_meta.progressToken` (the request id):
    /// every `notifications/progress` for the call is handed to `on_progress`
    /// on the calling thread while it waits, and, with
    /// `options.progress_resets_timeout`, restarts `options.timeout`;
    /// `options.max_total` bounds the whole call. A timeout names the limit
    /// that was reached.
    pub fn call_tool_with_progress(
        &self,
        name: &str,
        args: Value,
        options: &CallOptions<'_>,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<ToolResult, McpError> {
        self.require_tools()?;
        let mut params = Map::new();
        params.insert("name".into(), Value::String(name.to_string()));
        if !args.is_null() {
            params.insert("arguments".into(), args);
        }
        let mut watch = ProgressWatch {
            options,
            on_progress,
        };
        let raw = self.request_inner(
            "tools/call",
            Some(Value::Object(params)),
            options.timeout,
            true,
            options.stop,
            Some(&mut watch),
        )?;
        ToolResult::from_value(raw)
            .map_err(|e| self.shared.protocol(format!("tools/call {name}: {e}")))
    }

    /// Sends `ping` and returns the round-trip time.
    pub fn ping(&self, timeout: Duration) -> Result<Duration, McpError> {
        let start = Instant::now();
        self.request("ping", None, timeout)?;
        Ok(start.elapsed())
    }

    /// Sends any request and returns its `result`; cancels it on the deadline.
    pub fn request(
        &self,
        method: &str,
        params: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, McpError> {
        self.request_inner(method, params, timeout, true, None, None)
    }

    /// Registers a request, sends it and waits for its answer: the body of
    /// every request this session makes.
    fn request_inner(
        &self,
        method: &str,
        params: Option<Value>,
        timeout: Duration,
        cancel_on_timeout: bool,
        stop: Stop<'_>,
        watch: Option<&mut ProgressWatch<'_, '_>>,
    ) -> Result<Value, McpError> {
        let start = Instant::now();
        let hard_deadline = watch
            .as_ref()
            .and_then(|w| w.options.max_total)
            .map(|m| start + m);
        if stopped(stop) {
            return Err(McpError::Interrupted {
                method: method.to_string(),
                after: Duration::ZERO,
            });
        }
        let (id, rx, progress_rx) = self.register_pending(watch.is_some())?;
        let deadline = capped(hard_deadline, start + timeout);
        self.send_request(id, method, params, watch.is_some(), deadline, stop)?;
        let mut wait = Wait {
            session: self,
            method,
            id,
            start,
            timeout,
            hard_deadline,
            deadline,
            cancel_on_timeout,
            stop,
            watch,
            rx,
            progress_rx,
            progress_seen: 0,
        };
        let reply = wait.for_reply()?;
        self.reply_value(method, reply)
    }

    /// Issues the next request id and records it as pending, with a progress
    /// channel when the caller watches progress; fails if the session is dead.
    fn register_pending(&self, watched: bool) -> Result<Registered, McpError> {
        let (tx, rx) = bounded(1);
        let (progress_tx, progress_rx) = if watched {
            let (ptx, prx) = bounded(PROGRESS_QUEUE_DEPTH);
            (Some(ptx), Some(prx))
        } else {
            (None, None)
        };
        let mut r = self.shared.routing();
        if let Some(dead) = &r.dead {
            return Err(dead.clone());
        }
        let id = r.next_id;
        r.next_id += 1;
        r.pending.insert(
            id,
            Pending {
                reply: tx,
                progress: progress_tx,
            },
        );
        Ok((id, rx, progress_rx))
    }

    /// Writes request `id` (with its progress token when `watched`, and the
    /// modern `_meta`); on failure it is no longer pending.
    fn send_request(
        &self,
        id: u64,
        method: &str,
        params: Option<Value>,
        watched: bool,
        deadline: Instant,
        stop: Stop<'_>,
    ) -> Result<(), McpError> {
        let shared = &self.shared;
        let params = if watched {
            Some(with_progress_token(params, id))
        } else {
            params
        };
        let mut msg = json!({"jsonrpc": "2.0", "id": id, "method": method});
        let params = match self.era {
            Era::Modern => Some(self.with_meta(params)),
            Era::Legacy => params,
        };
        if let Some(p) = params {
            msg["params"] = p;
        }
        let sent = shared
            .encode(&msg)
            .and_then(|frame| shared.send_frame(frame, deadline, method, stop));
        if let Err(e) = sent {
            shared.routing().pending.remove(&id);
            return Err(e);
        }
        shared
            .counters
            .requests_sent
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The value of a reply: its checked `result`, or the error it carries.
    fn reply_value(&self, method: &str, reply: Reply) -> Result<Value, McpError> {
        match reply {
            Reply::Result(v) if self.era == Era::Modern => match check_result_type(&v) {
                Ok(()) => Ok(v),
                Err(e) => Err(self.shared.protocol(format!("{method}: {e}"))),
            },
            Reply::Result(v) => Ok(v),
            Reply::Error {
                code,
                message,
                data,
            } => Err(McpError::Rpc {
                method: method.to_string(),
                code,
                message,
                data,
            }),
            Reply::Failed(e) => Err(e),
        }
    }

    /// `params` with the modern `_meta` merged in (keys already there, such
    /// as a `progressToken`, are kept).
    fn with_meta(&self, params: Option<Value>) -> Value {
        let mut params = match params {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let Value::Object(ours) = self.request_meta(&self.server.protocol_version) else {
            unreachable!("request_meta builds an object")
        };
        let entry = params
            .entry("_meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            for (k, v) in ours {
                m.entry(k).or_insert(v);
            }
        }
        Value::Object(params)
    }

    /// Best effort: tells the server we no longer want request `id`.
    fn send_cancel(&self, id: u64, reason: String) {
        let params = json!({"requestId": id, "reason": reason});
        let msg = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params});
        let Ok(frame) = self.shared.encode(&msg) else {
            return;
        };
        if self.shared.out.try_send(WriterCmd::Frame(frame)).is_ok() {
            self.shared
                .counters
                .cancellations_sent
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends a notification (no reply expected).
    fn notify_with(
        &self,
        method: &str,
        params: Option<Value>,
        stop: Stop<'_>,
    ) -> Result<(), McpError> {
        let mut msg = json!({"jsonrpc": "2.0", "method": method});
        if let Some(p) = params {
            msg["params"] = p;
        }
        let frame = self.shared.encode(&msg)?;
        self.shared.send_frame(
            frame,
            Instant::now() + self.options.request_timeout,
            method,
            stop,
        )
    }

    /// Ends the session: fails pending calls, closes the write half, ends the peer
    /// through the transport's guard (a stdio child is ended and reaped), and joins
    /// the threads. Idempotent; also run on drop.
    pub fn close(&self) -> Result<CloseOutcome, McpError> {
        self.close_inner(true)
    }

    /// Ends the session like [`Session::close`] but without giving the writer
    /// its grace to flush queued frames: the peer is
    /// ended at once (for a socket: shut down, so the threads end at once).
    /// For a run that was interrupted by a signal.
    pub fn abort(&self) -> Result<CloseOutcome, McpError> {
        self.close_inner(false)
    }

    fn close_inner(&self, flush: bool) -> Result<CloseOutcome, McpError> {
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(outcome) = &threads.outcome {
            return Ok(outcome.clone());
        }
        let shared = &self.shared;
        shared.fail_all(shared.closed("the session was closed"));
        if flush {
            // Queued frames (e.g. a cancellation) are written first; then the write half closes.
            let _ = shared
                .out
                .send_timeout(WriterCmd::Close, WRITER_FLUSH_GRACE);
            if let Some((_, done)) = &threads.writer {
                let _ = done.recv_timeout(WRITER_FLUSH_GRACE);
            }
        } else {
            let _ = shared.out.try_send(WriterCmd::Close);
        }
        let outcome = match &shared.guard {
            Some(guard) => guard
                .shutdown()
                .map_err(|e| McpError::io(format!("ending {}", shared.peer), e)),
            None => Ok(CloseOutcome::default()),
        };
        // A thread still running past its grace is blocked on a stream nobody can
        // end (no guard); it is left detached rather than hanging the caller.
        let t = &mut *threads;
        for slot in [&mut t.writer, &mut t.reader] {
            if let Some((handle, done)) = slot.take() {
                if !matches!(
                    done.recv_timeout(READER_EXIT_GRACE),
                    Err(RecvTimeoutError::Timeout)
                ) {
                    let _ = handle.join();
                }
            }
        }
        let outcome = outcome?;
        threads.outcome = Some(outcome.clone());
        Ok(outcome)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// `deadline`, never past the hard limit of the whole call.
fn capped(hard_deadline: Option<Instant>, deadline: Instant) -> Instant {
    hard_deadline.map_or(deadline, |h| deadline.min(h))
}

/// A sent request waiting for its answer: what the wait threads through
/// ([`Session::request_inner`]).
struct Wait<'r, 'a, 'b> {
    session: &'r Session,
    method: &'r str,
    id: u64,
    start: Instant,
    /// Deadline of the call (or of the silence between progress notifications).
    timeout: Duration,
    /// Bound of the whole call, whatever the progress.
    hard_deadline: Option<Instant>,
    deadline: Instant,
    cancel_on_timeout: bool,
    stop: Stop<'r>,
    watch: Option<&'r mut ProgressWatch<'a, 'b>>,
    rx: Receiver<Reply>,
    progress_rx: Option<Receiver<Progress>>,
    progress_seen: u64,
}

impl Wait<'_, '_, '_> {
    /// Waits for the reply, handing progress to the caller, until the
    /// deadline, a stop or the end of the session.
    fn for_reply(&mut self) -> Result<Reply, McpError> {
        loop {
            match self.next_event() {
                Event::Reply(reply) => return Ok(reply),
                Event::ProgressEnded => self.progress_rx = None,
                Event::Progress(p) => self.on_progress(&p),
                Event::Idle(RecvTimeoutError::Timeout) => {
                    if let Some(reply) = self.on_wake()? {
                        return Ok(reply);
                    }
                }
                Event::Idle(RecvTimeoutError::Disconnected) => {
                    let shared = &self.session.shared;
                    return Err(shared
                        .routing()
                        .dead
                        .clone()
                        .unwrap_or_else(|| shared.closed("the reader has stopped")));
                }
            }
        }
    }

    /// Blocks until the reply, a progress notification or the next wake-up.
    /// Waits in slices when there is a stop flag, so a signal is seen soon.
    fn next_event(&self) -> Event {
        let wake = wake_at(self.deadline, self.stop);
        match &self.progress_rx {
            None => match self.rx.recv_deadline(wake) {
                Ok(reply) => Event::Reply(reply),
                Err(e) => Event::Idle(e),
            },
            Some(prx) => crossbeam_channel::select! {
                recv(self.rx) -> r => match r {
                    Ok(reply) => Event::Reply(reply),
                    Err(_) => Event::Idle(RecvTimeoutError::Disconnected),
                },
                recv(prx) -> p => match p {
                    Ok(p) => Event::Progress(p),
                    // The reader routed the reply and dropped the sender.
                    Err(_) => Event::ProgressEnded,
                },
                default(wake.saturating_duration_since(Instant::now())) => {
                    Event::Idle(RecvTimeoutError::Timeout)
                }
            },
        }
    }

    /// Hands a progress notification to the caller and, if it asked for
    /// that, restarts the deadline (never past the hard limit).
    fn on_progress(&mut self, p: &Progress) {
        self.progress_seen += 1;
        let Some(w) = self.watch.as_mut() else {
            return;
        };
        (w.on_progress)(p);
        if w.options.progress_resets_timeout {
            self.deadline = capped(self.hard_deadline, Instant::now() + self.timeout);
        }
    }

    /// After a wait slice: keeps waiting (`None`), takes an answer that
    /// raced the deadline, or gives up (stopped or timed out).
    fn on_wake(&mut self) -> Result<Option<Reply>, McpError> {
        let interrupted = stopped(self.stop);
        if !interrupted && Instant::now() < self.deadline {
            return Ok(None);
        }
        let still_pending = self
            .session
            .shared
            .routing()
            .pending
            .remove(&self.id)
            .is_some();
        match self.rx.try_recv() {
            // The answer raced the deadline (or the signal) and won: use it.
            Ok(reply) if !still_pending => Ok(Some(reply)),
            _ if interrupted => Err(self.interrupted()),
            _ => Err(self.timed_out()),
        }
    }

    /// Gives up on a stop: cancels the request (if asked to) and says so.
    fn interrupted(&self) -> McpError {
        if self.cancel_on_timeout {
            self.session
                .send_cancel(self.id, "client interrupted by signal".into());
        }
        McpError::Interrupted {
            method: self.method.to_string(),
            after: self.start.elapsed(),
        }
    }

    /// Gives up at the deadline: cancels the request (if asked to) and names
    /// the limit that was reached, with what may explain the silence.
    fn timed_out(&self) -> McpError {
        let waited = self.deadline.saturating_duration_since(self.start);
        if self.cancel_on_timeout {
            self.session
                .send_cancel(self.id, format!("client deadline of {waited:?} expired"));
        }
        let mut hints = Vec::new();
        let progress_resets = self
            .watch
            .as_ref()
            .is_some_and(|w| w.options.progress_resets_timeout);
        if self.hard_deadline.is_some_and(|h| self.deadline >= h) {
            hints.push(format!(
                "the hard limit on the whole call ({waited:?}, max total) was reached"
            ));
        } else if self.progress_seen > 0 && progress_resets {
            hints.push(format!(
                "{} progress notification(s), then none for {:?}",
                self.progress_seen, self.timeout
            ));
        }
        hints.extend(self.session.shared.timeout_hint());
        McpError::Timeout {
            method: self.method.to_string(),
            id: self.id,
            after: waited,
            hint: (!hints.is_empty()).then(|| hints.join("; ")),
        }
    }
}

/// Starts the I/O thread `name` running `body`; the receiver disconnects
/// when the thread ends, so closing can wait for it with a deadline.
fn spawn_io_thread(
    name: &str,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<(JoinHandle<()>, Receiver<()>)> {
    let (done_tx, done_rx) = bounded::<()>(0);
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _done = done_tx;
            body()
        })?;
    Ok((handle, done_rx))
}

/// What woke a waiting caller.
enum Event {
    Reply(Reply),
    Progress(Progress),
    /// The call's progress channel closed (its reply is on the way).
    ProgressEnded,
    Idle(RecvTimeoutError),
}

/// `params` with `_meta.progressToken` set to the request's `id`.
fn with_progress_token(params: Option<Value>, id: u64) -> Value {
    let mut params = match params {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let meta = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(m) = meta {
        m.insert("progressToken".into(), Value::from(id));
    }
    Value::Object(params)
}

fn writer_loop(
    shared: &Shared,
    mut writer: Box<dyn std::io::Write + Send>,
    rx: Receiver<WriterCmd>,
) {
    while let Ok(cmd) = rx.recv() {
        match cmd {
            WriterCmd::Frame(frame) => {
                if let Err(e) = write_encoded(&mut writer, &frame) {
                    shared.fail_all(
                        shared.stream_ended(&format!("writing to the server failed: {e}")),
                    );
                    return;
                }
            }
            WriterCmd::Close => return,
        }
    }
}

fn reader_loop(shared: &Shared, reader: Box<dyn std::io::Read + Send>) {
    let mut frames = FrameReader::new(reader, shared.framing);
    loop {
        let frame = match frames.read_frame() {
            Ok(frame) => frame,
            Err(FrameError::Eof) => {
                shared.fail_all(shared.stream_ended("the server closed its output"));
                return;
            }
            Err(e @ (FrameError::Io(_) | FrameError::TimedOut)) => {
                shared.fail_all(shared.stream_ended(&format!("reading from the server: {e}")));
                return;
            }
            Err(e) => {
                shared.fail_all(shared.protocol(format!("unreadable output: {e}")));
                return;
            }
        };
        let msg: Value = match serde_json::from_slice(&frame) {
            Ok(v) => v,
            Err(e) => {
                let shown = String::from_utf8_lossy(&frame[..frame.len().min(GARBAGE_PREVIEW_LEN)])
                    .into_owned();
                shared.fail_all(shared.protocol(format!(
                    "output is not valid JSON ({e}); {} bytes starting {shown:?}",
                    frame.len()
                )));
                return;
            }
        };
        if let Err(e) = dispatch(shared, msg, true) {
            shared.fail_all(e);
            return;
        }
    }
}

/// Handles one decoded message. An `Err` is a protocol violation that kills the session.
fn dispatch(shared: &Shared, msg: Value, allow_batch: bool) -> Result<(), McpError> {
    let obj = match msg {
        Value::Object(obj) => obj,
        Value::Array(items) if allow_batch && !items.is_empty() => {
            return items
                .into_iter()
                .try_for_each(|m| dispatch(shared, m, false));
        }
        other => {
            return Err(shared.protocol(format!("not a JSON-RPC message: {}", preview(&other))))
        }
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(shared.protocol(format!(
            "message without \"jsonrpc\":\"2.0\": {}",
            preview(&Value::Object(obj))
        )));
    }
    let id = obj.get("id").filter(|id| !id.is_null()).cloned();
    if let Some(method) = obj.get("method").and_then(Value::as_str) {
        match id {
            Some(id) => answer_server_request(shared, id, method),
            None => {
                shared
                    .counters
                    .notifications_received
                    .fetch_add(1, Ordering::Relaxed);
                if method == "notifications/progress" {
                    route_progress(shared, obj.get("params"));
                }
            }
        }
        return Ok(());
    }
    let reply = if let Some(result) = obj.get("result") {
        Reply::Result(result.clone())
    } else if let Some(err) = obj.get("error") {
        let code = err.get("code").and_then(Value::as_i64);
        let message = err.get("message").and_then(Value::as_str);
        match (code, message) {
            (Some(code), Some(message)) => Reply::Error {
                code,
                message: message.to_string(),
                data: err.get("data").cloned(),
            },
            _ => {
                Reply::Failed(shared.protocol(format!("malformed error object: {}", preview(err))))
            }
        }
    } else {
        return Err(shared.protocol(format!(
            "message with neither method, result nor error: {}",
            preview(&Value::Object(obj))
        )));
    };
    route(shared, id, reply);
    Ok(())
}

/// Hands a `notifications/progress` to the caller whose request id is its
/// token, if that caller watches progress; otherwise it is only counted. A
/// malformed one is ignored (notifications get no answer).
fn route_progress(shared: &Shared, params: Option<&Value>) {
    let Some(params) = params else { return };
    let (Some(token), Some(progress)) = (
        params.get("progressToken").and_then(Value::as_u64),
        params.get("progress").and_then(Value::as_f64),
    ) else {
        return;
    };
    let r = shared.routing();
    if let Some(tx) = r.pending.get(&token).and_then(|p| p.progress.as_ref()) {
        // Never block the reader: a caller that does not keep up misses steps.
        let _ = tx.try_send(Progress {
            progress,
            total: params.get("total").and_then(Value::as_f64),
            message: params
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string),
        });
    }
}

fn route(shared: &Shared, id: Option<Value>, reply: Reply) {
    let mut r = shared.routing();
    let Some(id) = id else {
        if let Reply::Error { code, message, .. } = &reply {
            r.last_idless_error = Some(format!("{code} {message}"));
        } else {
            r.last_unknown_id = Some(Value::Null);
            shared
                .counters
                .unknown_replies
                .fetch_add(1, Ordering::Relaxed);
        }
        return;
    };
    let numeric = id.as_u64();
    if let Some(p) = numeric.and_then(|n| r.pending.remove(&n)) {
        drop(r);
        let _ = p.reply.try_send(reply);
    } else if numeric.is_some_and(|n| n > 0 && n < r.next_id) {
        shared
            .counters
            .late_replies_dropped
            .fetch_add(1, Ordering::Relaxed);
    } else {
        r.last_unknown_id = Some(id);
        shared
            .counters
            .unknown_replies
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Answers a request the server sent us: `ping` with `{}`, anything else with -32601
/// (this client declares no capabilities, so it serves no other method).
fn answer_server_request(shared: &Shared, id: Value, method: &str) {
    let reply = if method == "ping" {
        json!({"jsonrpc": "2.0", "id": id, "result": {}})
    } else {
        json!({"jsonrpc": "2.0", "id": id, "error": {
            "code": codes::METHOD_NOT_FOUND,
            "message": format!("Method not found: {method} (this client declares no capabilities)"),
        }})
    };
    // Never block the reader: a full queue means the writer is stuck anyway.
    if let Ok(frame) = shared.encode(&reply) {
        match shared.out.try_send(WriterCmd::Frame(frame)) {
            Ok(()) => {
                shared
                    .counters
                    .server_requests_answered
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {}
        }
    }
}

/// A modern result's `resultType`: absent (an older server) or `"complete"`;
/// anything else (`input_required`: the server wants input this client cannot
/// give) is refused by name.
fn check_result_type(result: &Value) -> Result<(), String> {
    match result.get("resultType") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(t)) if t == "complete" => Ok(()),
        Some(other) => Err(format!(
            "result of type {other}: this client handles only complete results \
             (it declares no capability to provide input)"
        )),
    }
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `Session` is shared across caller threads by design; fail the build if a field breaks that.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Session>();
};
