//! The agent's server: bind, announce readiness, serve each connection, stop
//! on `shutdown`.
//!
//! What happens on a connection is pluggable ([`ConnectionMode`]): the default
//! ([`RpcMode`]) answers JSON-RPC itself with a [`Handler`]; the MCP bridge
//! (`super::bridge`) relays to a stdio MCP server child. Either way the agent's
//! own methods (`ukload/status`, `shutdown`) are answered by the agent
//! ([`AgentConn::agent_request`]), so the host's boot probe works in every mode.
//!
//! Deadlines: accepting polls every [`ACCEPT_POLL_INTERVAL`] so that a
//! `shutdown` is noticed promptly; a connection that sends nothing for
//! [`IDLE_TIMEOUT`] (5 minutes: long enough for a host that pings, then
//! runs a slow tool, short enough that dead hosts do not pin threads) is
//! closed; every reply must be written within [`WRITE_TIMEOUT`]. At most
//! [`MAX_CONNECTIONS`] are served at once; more are closed on arrival.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::net::Shutdown;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::config::{AgentConfig, ListenAddr};
use crate::clock;
use crate::framing::{write_frame, FrameError, FrameReader, Framing};
use crate::jsonrpc::{self, Message, ParseError, PingInfo};
use crate::vsock::{HybridListener, Listener, Stream, VsockListener};

/// How often the accept loop looks at the stop flag.
pub const ACCEPT_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A connection silent for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Longest time one reply may take to write.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long `run_agent` waits, after `shutdown`, for other connections'
/// threads to finish (they are woken by shutting their sockets down).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Pause after a transient accept failure (out of fds or memory) so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Agent identification in `PingInfo::agent`.
const AGENT_NAME: &str = concat!("ukload-guest ", env!("CARGO_PKG_VERSION"));

static PROCESS_START_MONO_NS: OnceLock<u64> = OnceLock::new();

/// Records "now" as the agent process's start. `ukload-guest` calls it
/// first thing in `main`, so that `started_mono_ns` covers argument parsing
/// and PID 1 setup too; without it `run_agent`'s entry time is used.
pub fn mark_process_start() {
    let _ = PROCESS_START_MONO_NS.set(clock::monotonic_ns());
}

/// Handles methods the agent itself does not know (`ukload/status` and `shutdown`
/// are the agent's). Return `None` for "not mine": the agent answers
/// -32601. For notifications the return value is ignored.
pub trait Handler: Send + Sync {
    fn handle(&self, method: &str, params: Option<Value>) -> Option<Result<Value, (i64, String)>>;
}

/// Knows only `ping` (`{}`): everything else is "method not found".
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultHandler;

impl Handler for DefaultHandler {
    fn handle(&self, method: &str, _params: Option<Value>) -> Option<Result<Value, (i64, String)>> {
        Some(match method {
            "ping" => Ok(serde_json::json!({})),
            _ => Err(method_not_found(method)),
        })
    }
}

fn method_not_found(method: &str) -> (i64, String) {
    (
        jsonrpc::METHOD_NOT_FOUND,
        format!("method not found: {method}"),
    )
}

/// Why the agent stopped with an error.
#[derive(Debug)]
pub enum AgentError {
    /// Could not bind or listen.
    Bind { addr: ListenAddr, source: io::Error },
    /// `accept` failed in a way that will not go away.
    Accept { addr: ListenAddr, source: io::Error },
    /// `UKLOAD_CID` is set but not a CID.
    BadCidEnv { value: String },
    /// Could not print the ready line (stdout closed?).
    Stdout(io::Error),
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            AgentError::Accept { addr, source } => write!(f, "accepting on {addr}: {source}"),
            AgentError::BadCidEnv { value } => write!(
                f,
                "environment {}={value:?} is not a CID (expected an unsigned number)",
                crate::ENV_CID
            ),
            AgentError::Stdout(e) => write!(f, "writing the ready line to stdout: {e}"),
        }
    }
}

impl std::error::Error for AgentError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AgentError::Bind { source, .. } | AgentError::Accept { source, .. } => Some(source),
            AgentError::Stdout(e) => Some(e),
            AgentError::BadCidEnv { .. } => None,
        }
    }
}

/// Runs the agent with [`DefaultHandler`] until a `shutdown` request.
pub fn run_agent(cfg: AgentConfig) -> Result<(), AgentError> {
    run_agent_with(cfg, Arc::new(DefaultHandler))
}

/// How the agent serves one accepted connection.
pub trait ConnectionMode: Send + Sync {
    /// Serves `stream` until it ends, on the connection's own thread. Must
    /// return within bounded time once the stream is shut down (the agent shuts
    /// every live connection down when it stops), and answer the agent's own
    /// requests through [`AgentConn::agent_request`].
    fn serve(&self, conn: &AgentConn<'_>, stream: Stream);
}

/// The agent's side of one connection, handed to a [`ConnectionMode`].
pub struct AgentConn<'a> {
    shared: &'a Shared,
    id: u64,
}

/// The agent's answer to one of its own requests.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentReply {
    /// The JSON-RPC response to send.
    pub response: Value,
    /// Close the connection after sending it (`shutdown`).
    pub close: bool,
}

impl AgentConn<'_> {
    /// The connection's framing (the agent's `--framing`).
    pub fn framing(&self) -> Framing {
        self.shared.framing
    }

    /// A number identifying the connection in logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the agent is stopping (a `shutdown` was received).
    pub fn is_stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// The [`jsonrpc::STATUS_METHOD`] result: the agent's timestamps,
    /// `now_mono_ns` set to now.
    pub fn ping_info(&self) -> PingInfo {
        let mut info = self.shared.info.clone();
        info.now_mono_ns = clock::monotonic_ns();
        info
    }

    /// The agent's own answer to request `method` with `id`:
    /// [`jsonrpc::STATUS_METHOD`] (the [`PingInfo`]: the boot probe's
    /// report) and `shutdown` (`{}`, and the agent stops). `None` for any
    /// other method (MCP's `ping` is the MCP server's: `{}`).
    pub fn agent_request(&self, id: &Value, method: &str) -> Option<AgentReply> {
        match method {
            jsonrpc::STATUS_METHOD => {
                let result = serde_json::to_value(self.ping_info()).expect("PingInfo serializes");
                Some(AgentReply {
                    response: jsonrpc::response(id.clone(), result),
                    close: false,
                })
            }
            "shutdown" => {
                self.shared.stop.store(true, Ordering::SeqCst);
                Some(AgentReply {
                    response: jsonrpc::response(id.clone(), serde_json::json!({})),
                    close: true,
                })
            }
            _ => None,
        }
    }
}

/// The default mode: JSON-RPC answered by the agent, other methods by a [`Handler`].
pub struct RpcMode {
    handler: Arc<dyn Handler>,
}

impl RpcMode {
    pub fn new(handler: Arc<dyn Handler>) -> Self {
        RpcMode { handler }
    }
}

impl ConnectionMode for RpcMode {
    fn serve(&self, conn: &AgentConn<'_>, stream: Stream) {
        serve_connection(conn, &*self.handler, stream);
    }
}

/// State shared by the accept loop and connection threads.
struct Shared {
    info: PingInfo,
    framing: Framing,
    mode: Arc<dyn ConnectionMode>,
    stop: AtomicBool,
    /// Clones of live connections, so that stopping can wake their readers.
    live: Mutex<HashMap<u64, Stream>>,
    next_id: AtomicU64,
}

/// Runs the agent until a `shutdown` request, handing unknown methods to
/// `handler`. Returns after the listener is closed and the other
/// connections have been shut down (waiting at most [`SHUTDOWN_GRACE`]).
pub fn run_agent_with(cfg: AgentConfig, handler: Arc<dyn Handler>) -> Result<(), AgentError> {
    run_agent_mode(cfg, Arc::new(RpcMode::new(handler)))
}

/// Runs the agent until a `shutdown` request, serving each connection with
/// `mode`. Returns like [`run_agent_with`].
pub fn run_agent_mode(cfg: AgentConfig, mode: Arc<dyn ConnectionMode>) -> Result<(), AgentError> {
    let entry_ns = clock::monotonic_ns();
    let started_mono_ns = *PROCESS_START_MONO_NS.get().unwrap_or(&entry_ns);
    let cid = resolve_cid(&cfg)?;

    // Process mode stands in for a guest's boot with this pause.
    std::thread::sleep(cfg.boot_delay);

    let listener = bind(&cfg.listen)?;
    let info = ready_info(&cfg, cid, started_mono_ns);
    if cfg.ready_marker {
        print_ready_marker(&info)?;
    }

    let mut connections = Connections::new(Shared {
        info,
        framing: cfg.framing,
        mode,
        stop: AtomicBool::new(false),
        live: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
    });
    let result = connections.accept_until_stop(&listener, &cfg.listen);
    drop(listener);
    connections.stop_and_drain();
    result
}

/// What `ping` reports, stamped with the ready clocks as of now (just after bind).
fn ready_info(cfg: &AgentConfig, cid: Option<u32>, started_mono_ns: u64) -> PingInfo {
    PingInfo {
        pid: std::process::id(),
        cid,
        port: cfg.listen.port(),
        started_mono_ns,
        ready_mono_ns: clock::monotonic_ns(),
        ready_boottime_ns: clock::boottime_ns(),
        now_mono_ns: 0,
        agent: AGENT_NAME.to_string(),
    }
}

/// Prints the one-line ready marker the host waits for on stdout.
fn print_ready_marker(info: &PingInfo) -> Result<(), AgentError> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "ukload-guest: ready cid={} port={} pid={} mono_ns={} boottime_ns={}",
        info.cid.map_or_else(|| "-".to_string(), |c| c.to_string()),
        info.port,
        info.pid,
        info.ready_mono_ns,
        info.ready_boottime_ns
    )
    .and_then(|()| out.flush())
    .map_err(AgentError::Stdout)
}

/// Waits one poll interval for a connection. `Ok(None)` on timeout and after
/// a transient error (logged, with a pause); `Err` when accepting fails for good.
fn accept_next(listener: &Listener, addr: &ListenAddr) -> Result<Option<Stream>, AgentError> {
    match listener.accept_timeout(ACCEPT_POLL_INTERVAL) {
        Ok(s) => Ok(s),
        Err(e) if is_transient_accept_error(&e) => {
            log::warn!("accept on {addr}: {e} (retrying)");
            // Bounded pause: the condition (fd or memory exhaustion)
            // needs time to clear, and poll would report ready at once.
            std::thread::sleep(ACCEPT_ERROR_BACKOFF);
            Ok(None)
        }
        Err(e) => Err(AgentError::Accept {
            addr: addr.clone(),
            source: e,
        }),
    }
}

/// The accept loop's state: the table shared with connection threads, and
/// how many of those threads are still running (each reports on `done_*`
/// when it ends).
struct Connections {
    shared: Arc<Shared>,
    done_tx: crossbeam_channel::Sender<()>,
    done_rx: crossbeam_channel::Receiver<()>,
    running: usize,
}

impl Connections {
    /// Starts with no connections.
    fn new(shared: Shared) -> Self {
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<()>();
        Connections {
            shared: Arc::new(shared),
            done_tx,
            done_rx,
            running: 0,
        }
    }

    /// Accepts and serves connections until a `shutdown` request sets the
    /// stop flag (`Ok`) or accepting fails for good (`Err`).
    fn accept_until_stop(
        &mut self,
        listener: &Listener,
        addr: &ListenAddr,
    ) -> Result<(), AgentError> {
        loop {
            while self.done_rx.try_recv().is_ok() {
                self.running -= 1;
            }
            if self.shared.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let Some(stream) = accept_next(listener, addr)? else {
                continue;
            };
            if self.running >= MAX_CONNECTIONS {
                log::warn!("{MAX_CONNECTIONS} connections already open; closing a new one");
                continue;
            }
            self.start(stream);
        }
    }

    /// Registers `stream` in the live table and serves it on its own thread;
    /// closes it (by dropping it) when either step fails.
    fn start(&mut self, stream: Stream) {
        let shared = &self.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        match stream.try_clone() {
            Ok(clone) => {
                shared
                    .live
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, clone);
            }
            Err(e) => {
                log::warn!("cannot track a new connection ({e}); closing it");
                return;
            }
        }
        let conn_shared = Arc::clone(shared);
        let tx = self.done_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("conn-{id}"))
            .spawn(move || {
                let _done = ConnectionDone {
                    shared: &conn_shared,
                    id,
                    tx,
                };
                let conn = AgentConn {
                    shared: &conn_shared,
                    id,
                };
                conn_shared.mode.serve(&conn, stream);
            });
        match spawned {
            Ok(_) => self.running += 1,
            Err(e) => {
                log::warn!("cannot start a connection thread ({e}); closing it");
                shared
                    .live
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
            }
        }
    }

    /// Wakes every other connection's reader and gives the threads a bounded
    /// time ([`SHUTDOWN_GRACE`]) to finish their current reply.
    fn stop_and_drain(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for s in self
            .shared
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while self.running > 0 {
            if self.done_rx.recv_deadline(deadline).is_err() {
                log::warn!("{} connection(s) still busy at exit", self.running);
                break;
            }
            self.running -= 1;
        }
    }
}

/// Unregisters a connection and tells the accept loop, even if its thread
/// unwinds from a panic.
struct ConnectionDone<'a> {
    shared: &'a Shared,
    id: u64,
    tx: crossbeam_channel::Sender<()>,
}

impl Drop for ConnectionDone<'_> {
    fn drop(&mut self) {
        self.shared
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        let _ = self.tx.send(());
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ECONNABORTED)
    )
}

/// The CID to report: configured, else `UKLOAD_CID`, else (vsock) the
/// device's. In process mode with no CID given, none is reported.
fn resolve_cid(cfg: &AgentConfig) -> Result<Option<u32>, AgentError> {
    if let Some(cid) = cfg.cid {
        return Ok(Some(cid));
    }
    if let Some(value) = std::env::var_os(crate::ENV_CID) {
        let value = value.to_string_lossy().into_owned();
        return match value.trim().parse::<u32>() {
            Ok(cid) => Ok(Some(cid)),
            Err(_) => Err(AgentError::BadCidEnv { value }),
        };
    }
    match cfg.listen {
        ListenAddr::Vsock { .. } => match VsockListener::local_cid() {
            Ok(cid) => Ok(Some(cid)),
            Err(e) => {
                log::warn!("cannot learn this guest's CID ({e}); reporting none");
                Ok(None)
            }
        },
        ListenAddr::Uds { .. } => Ok(None),
    }
}

fn bind(addr: &ListenAddr) -> Result<Listener, AgentError> {
    let bound = match addr {
        ListenAddr::Vsock { port } => VsockListener::bind(*port).map(Listener::Vsock),
        ListenAddr::Uds { path, port } => HybridListener::bind(path, *port).map(Listener::Hybrid),
    };
    bound.map_err(|source| AgentError::Bind {
        addr: addr.clone(),
        source,
    })
}

/// What to do after a frame.
enum Next {
    Continue,
    Close,
}

/// Serves one connection until it closes, idles out, misbehaves, or asks
/// for `shutdown`.
fn serve_connection(conn: &AgentConn<'_>, handler: &dyn Handler, stream: Stream) {
    let shared = conn.shared;
    if let Err(e) = stream
        .set_read_timeout(Some(IDLE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
    {
        log::warn!("setting connection timeouts: {e}; closing it");
        return;
    }
    let mut reader = FrameReader::new(stream, shared.framing);
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let frame = match reader.read_frame() {
            Ok(f) => f,
            Err(FrameError::Eof) => return,
            Err(FrameError::TimedOut) => {
                if !shared.stop.load(Ordering::SeqCst) {
                    log::info!("connection idle for {IDLE_TIMEOUT:?}; closing it");
                }
                return;
            }
            Err(e @ (FrameError::TooLarge { .. } | FrameError::ZeroLength)) => {
                // Best effort: tell the peer why, then close (the stream
                // is out of step in length framing).
                let reply = jsonrpc::error_response(
                    Value::Null,
                    jsonrpc::INVALID_REQUEST,
                    &format!("{e}; closing the connection"),
                );
                let _ = send(&mut reader, shared.framing, &reply);
                return;
            }
            Err(_) => return,
        };
        match handle_frame(conn, handler, &mut reader, &frame) {
            Ok(Next::Continue) => {}
            Ok(Next::Close) => return,
            Err(e) => {
                if !shared.stop.load(Ordering::SeqCst) {
                    log::warn!("writing a reply: {e}; closing the connection");
                }
                return;
            }
        }
    }
}

fn send(reader: &mut FrameReader<Stream>, framing: Framing, msg: &Value) -> Result<(), FrameError> {
    write_frame(reader.get_mut(), framing, &jsonrpc::to_bytes(msg))
}

fn handle_frame(
    conn: &AgentConn<'_>,
    handler: &dyn Handler,
    reader: &mut FrameReader<Stream>,
    frame: &[u8],
) -> Result<Next, FrameError> {
    let framing = conn.framing();
    let msg = match jsonrpc::parse(frame) {
        Ok(m) => m,
        Err(e) => {
            let id = match e {
                ParseError::NotJson(_) | ParseError::NotUtf8 => Value::Null,
                _ => best_effort_id(frame),
            };
            send(
                reader,
                framing,
                &jsonrpc::error_response(id, e.code(), &e.to_string()),
            )?;
            return Ok(Next::Continue);
        }
    };
    match msg {
        Message::Request { id, method, params } => match conn.agent_request(&id, &method) {
            Some(reply) => {
                send(reader, framing, &reply.response)?;
                Ok(if reply.close {
                    Next::Close
                } else {
                    Next::Continue
                })
            }
            None => {
                let handled =
                    panic::catch_unwind(AssertUnwindSafe(|| handler.handle(&method, params)));
                let reply = match handled {
                    Ok(Some(Ok(result))) => jsonrpc::response(id, result),
                    Ok(Some(Err((code, message)))) => jsonrpc::error_response(id, code, &message),
                    Err(_) => jsonrpc::error_response(
                        id,
                        jsonrpc::INTERNAL_ERROR,
                        &format!("internal error: the handler for {method:?} panicked"),
                    ),
                    Ok(None) => {
                        let (code, message) = method_not_found(&method);
                        jsonrpc::error_response(id, code, &message)
                    }
                };
                send(reader, framing, &reply)?;
                Ok(Next::Continue)
            }
        },
        Message::Notification { method, params } => {
            // Notifications get no reply, whatever the handler says (or if
            // it panics).
            let _ = panic::catch_unwind(AssertUnwindSafe(|| handler.handle(&method, params)));
            Ok(Next::Continue)
        }
        // The agent sends no requests, so responses are stray: ignore them.
        Message::Response { .. } | Message::Error { .. } => Ok(Next::Continue),
    }
}

/// The `id` of an invalid request, if it has a usable one, so the error
/// reply can be matched; `null` otherwise.
fn best_effort_id(frame: &[u8]) -> Value {
    serde_json::from_slice::<Value>(frame)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .filter(|id| matches!(id, Value::Number(_) | Value::String(_)))
        .unwrap_or(Value::Null)
}
