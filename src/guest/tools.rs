//! The guest as a tool executor: MCP (both eras, see [`crate::mcp::server`])
//! answered by the agent itself over the built-in tools, so a VM with nothing
//! else inside can execute tools. The agent's own methods (`ukload/status`,
//! `shutdown`) are answered first.
//!
//! One connection serves many requests at once: the reader thread answers
//! quick requests itself and hands each delayed `tools/call` to a thread of its
//! own, which waits out the delay (reporting progress when the request carried
//! a `progressToken`) and then writes the answer, unless a
//! `notifications/cancelled` for that request arrived first: then nothing is
//! sent. At most [`MAX_IN_FLIGHT`] calls wait per connection; past that a call
//! gets an error at once. When the connection ends, the waiting calls are
//! dropped.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use serde_json::Value;

use super::agent::{AgentConn, ConnectionMode, IDLE_TIMEOUT, WRITE_TIMEOUT};
use crate::framing::{write_frame, FrameError, FrameReader, Framing};
use crate::jsonrpc;
use crate::mcp::server::{
    progress_notification, too_many_in_flight, EraSupport, Outcome, PendingCall, ServerSession,
    MAX_IN_FLIGHT, PROGRESS_INTERVAL,
};
use crate::vsock::Stream;

/// Serves MCP over the built-in tools on every connection.
#[derive(Clone, Copy, Debug)]
pub struct McpMode {
    support: EraSupport,
}

impl McpMode {
    /// A mode serving the eras `support` allows (normally [`EraSupport::Dual`]).
    pub fn new(support: EraSupport) -> Self {
        McpMode { support }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The calls of one connection that are waiting out their delay, by id (as
/// JSON text). Dropping an entry's sender cancels it.
type InFlight = Arc<Mutex<HashMap<String, Sender<()>>>>;

/// The write half of a connection, shared by the reader and the call threads.
#[derive(Clone)]
struct Writer {
    stream: Arc<Mutex<Stream>>,
    framing: Framing,
}

impl Writer {
    fn send(&self, msg: &Value) -> Result<(), FrameError> {
        write_frame(
            &mut *lock(&self.stream),
            self.framing,
            &jsonrpc::to_bytes(msg),
        )
    }
}

impl ConnectionMode for McpMode {
    fn serve(&self, conn: &AgentConn<'_>, stream: Stream) {
        if let Err(e) = serve(self.support, conn, stream) {
            if !conn.is_stopping() {
                log::warn!("connection {}: {e}; closing it", conn.id());
            }
        }
    }
}

fn serve(support: EraSupport, conn: &AgentConn<'_>, stream: Stream) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let writer = Writer {
        stream: Arc::new(Mutex::new(stream.try_clone()?)),
        framing: conn.framing(),
    };
    let in_flight: InFlight = Arc::new(Mutex::new(HashMap::new()));
    let result = read_loop(support, conn, stream, &writer, &in_flight);
    // Waiting calls are dropped with the connection: their threads see the
    // senders go and end without writing.
    lock(&in_flight).clear();
    result
}

fn read_loop(
    support: EraSupport,
    conn: &AgentConn<'_>,
    stream: Stream,
    writer: &Writer,
    in_flight: &InFlight,
) -> io::Result<()> {
    let mut session = ServerSession::new(support);
    let mut reader = FrameReader::new(stream, conn.framing());
    let write_err = |e: FrameError| io::Error::other(format!("writing a reply: {e}"));
    loop {
        if conn.is_stopping() {
            return Ok(());
        }
        let frame = match reader.read_frame() {
            Ok(f) => f,
            Err(FrameError::Eof) => return Ok(()),
            Err(FrameError::TimedOut) => {
                return Err(io::Error::other(format!("idle for {IDLE_TIMEOUT:?}")));
            }
            Err(e @ (FrameError::TooLarge { .. } | FrameError::ZeroLength)) => {
                // Best effort: say why, then close (out of step in length framing).
                let _ = writer.send(&jsonrpc::error_response(
                    Value::Null,
                    jsonrpc::INVALID_REQUEST,
                    &format!("{e}; closing the connection"),
                ));
                return Ok(());
            }
            Err(_) => return Ok(()),
        };
        if let Some(close) = agent_method(conn, writer, &frame).map_err(write_err)? {
            if close {
                return Ok(());
            }
            continue;
        }
        match session.handle_payload(&frame) {
            Outcome::Reply(r) => writer.send(&r).map_err(write_err)?,
            Outcome::Nothing => {}
            Outcome::Cancel(id) => {
                // Dropping the sender wakes the call's thread, which then
                // sends nothing.
                lock(in_flight).remove(&id.to_string());
            }
            Outcome::Later(call) => start_call(call, writer, in_flight).map_err(write_err)?,
        }
    }
}

/// Answers the agent's own requests (`ukload/status`, `shutdown`). `Some(close)`
/// when the frame was one of them.
fn agent_method(
    conn: &AgentConn<'_>,
    writer: &Writer,
    frame: &[u8],
) -> Result<Option<bool>, FrameError> {
    let Ok(msg) = serde_json::from_slice::<Value>(frame) else {
        return Ok(None);
    };
    let id = msg.get("id").filter(|id| id.is_string() || id.is_number());
    let method = msg.get("method").and_then(Value::as_str);
    let (Some(id), Some(method)) = (id, method) else {
        return Ok(None);
    };
    match conn.agent_request(id, method) {
        Some(reply) => {
            writer.send(&reply.response)?;
            Ok(Some(reply.close))
        }
        None => Ok(None),
    }
}

/// Starts the thread that answers `call` after its delay, unless cancelled.
fn start_call(call: PendingCall, writer: &Writer, in_flight: &InFlight) -> Result<(), FrameError> {
    let (tx, rx) = bounded::<()>(0);
    let key = call.id.as_ref().map(Value::to_string);
    if let (Some(id), Some(key)) = (&call.id, &key) {
        let mut map = lock(in_flight);
        if map.len() >= MAX_IN_FLIGHT {
            drop(map);
            return writer.send(&too_many_in_flight(id.clone()));
        }
        map.insert(key.clone(), tx);
    } else {
        // A batch: not cancellable; the sender lives in the thread.
        let writer = writer.clone();
        let spawned = std::thread::Builder::new()
            .name("mcp-batch".into())
            .spawn(move || {
                let _keep = tx;
                if wait(&rx, &call, &writer) {
                    let _ = writer.send(&call.response);
                }
            });
        return spawned.map(drop).map_err(FrameError::Io);
    }
    let id = call.id.clone().unwrap_or(Value::Null);
    let thread_writer = writer.clone();
    let map = Arc::clone(in_flight);
    let spawned = std::thread::Builder::new()
        .name("mcp-call".into())
        .spawn(move || {
            let writer = thread_writer;
            if !wait(&rx, &call, &writer) {
                return;
            }
            // Still registered: not cancelled. Unregister, then answer.
            if let Some(key) = key {
                if lock(&map).remove(&key).is_some() {
                    let _ = writer.send(&call.response);
                }
            }
        });
    if let Err(e) = spawned {
        lock(in_flight).remove(&id.to_string());
        return writer.send(&jsonrpc::error_response(
            id,
            jsonrpc::INTERNAL_ERROR,
            &format!("cannot start a thread for the call: {e}"),
        ));
    }
    Ok(())
}

/// Waits out `call.delay`, reporting progress if asked. False when cancelled
/// (the sender was dropped).
fn wait(rx: &Receiver<()>, call: &PendingCall, writer: &Writer) -> bool {
    let start = Instant::now();
    let until = start + call.delay;
    loop {
        let now = Instant::now();
        if now >= until {
            return true;
        }
        let slice = match call.progress_token {
            Some(_) => (until - now).min(PROGRESS_INTERVAL),
            None => until - now,
        };
        match rx.recv_timeout(slice) {
            Err(RecvTimeoutError::Timeout) => {}
            // Dropped (cancelled, or the connection ended) or, never, a message.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return false,
        }
        if let Some(token) = &call.progress_token {
            let elapsed = start.elapsed().min(call.delay);
            if elapsed < call.delay
                && writer
                    .send(&progress_notification(token, elapsed, call.delay))
                    .is_err()
            {
                return false;
            }
        }
    }
}
