//! What a [`Session`](super::Session) runs over: a boxed reader, a boxed writer,
//! a framing, and optionally a guard that ends the peer when the session closes.
//!
//! Every byte stream plugs in the same way: a stdio child
//! ([`Transport::stdio`]), a Unix stream such as hybrid vsock after its
//! `CONNECT` handshake ([`Transport::unix_stream`]), or an `AF_VSOCK` stream
//! (reader and writer from `try_clone`, plus a guard that shuts the socket down).

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use super::error::McpError;
use super::stdio::{spawn_stdio_child_with, CloseOutcome, SpawnOptions, StdioChild};
use crate::framing::Framing;
use crate::vsock::Stream;

/// Ends the peer of a transport and releases what it holds.
///
/// The session calls [`shutdown`](TransportGuard::shutdown) after it has dropped
/// its writer; the guard must make the reader reach end of file (kill the
/// process, shut the socket down) and return within bounded time.
pub trait TransportGuard: Send + Sync {
    /// Ends the peer; idempotent.
    fn shutdown(&self) -> io::Result<CloseOutcome>;
    /// The server's pid, when the transport owns a process.
    fn pid(&self) -> Option<u32> {
        None
    }
    /// What the server wrote on stderr so far, when it is a process.
    fn stderr_tail(&self) -> Option<String> {
        None
    }
    /// Context for an error message after the stream ended (exit status, stderr
    /// tail); may wait up to `wait` for that context to be complete.
    fn diagnostics(&self, wait: Duration) -> Option<String> {
        let _ = wait;
        None
    }
}

/// A byte stream to an MCP server, ready for [`Session::initialize`](super::Session::initialize).
pub struct Transport {
    pub(crate) reader: Box<dyn Read + Send>,
    pub(crate) writer: Box<dyn Write + Send>,
    pub(crate) framing: Framing,
    pub(crate) peer: String,
    pub(crate) guard: Option<Arc<dyn TransportGuard>>,
}

impl Transport {
    /// A transport over any reader/writer pair. `peer` describes the server in errors.
    ///
    /// Without a guard, closing the session drops the writer but cannot force the
    /// reader to end: give a guard for anything that may not close by itself.
    pub fn new(
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
        framing: Framing,
        peer: impl Into<String>,
    ) -> Self {
        Transport {
            reader,
            writer,
            framing,
            peer: peer.into(),
            guard: None,
        }
    }

    /// Sets what ends the peer when the session closes.
    pub fn with_guard(mut self, guard: Arc<dyn TransportGuard>) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Spawns `argv` as a stdio MCP server (its own process group, stderr kept);
    /// the session kills and reaps it on close.
    pub fn stdio(argv: &[String], framing: Framing) -> Result<Transport, McpError> {
        Transport::stdio_with(argv, framing, &SpawnOptions::default())
    }

    /// [`Transport::stdio`] with [`SpawnOptions`] (die with the parent, extra env).
    pub fn stdio_with(
        argv: &[String],
        framing: Framing,
        opts: &SpawnOptions,
    ) -> Result<Transport, McpError> {
        let child = spawn_stdio_child_with(argv, opts)
            .map_err(|e| McpError::io("starting the stdio MCP server", e))?;
        Transport::from_stdio_child(child, framing)
            .map_err(|e| McpError::io("connecting to the stdio MCP server", e))
    }

    /// A transport over a stdio child's stdin/stdout; the child becomes the
    /// transport's guard (ended and reaped when the session closes).
    pub fn from_stdio_child(child: StdioChild, framing: Framing) -> io::Result<Transport> {
        let (stdin, stdout) = (child.take_stdin(), child.take_stdout());
        let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: stdin/stdout already taken", child.describe()),
            ));
        };
        let peer = child.describe();
        Ok(
            Transport::new(Box::new(stdout), Box::new(stdin), framing, peer)
                .with_guard(Arc::new(child)),
        )
    }

    /// A transport over a connected Unix stream (e.g. hybrid vsock after `CONNECT`);
    /// closing the session shuts the socket down.
    pub fn unix_stream(
        stream: UnixStream,
        framing: Framing,
        peer: impl Into<String>,
    ) -> Result<Transport, McpError> {
        Transport::socket(Stream::Unix(stream), framing, peer.into(), "MCP socket")
    }

    /// A transport over a connected [`vsock::Stream`](crate::vsock::Stream) of
    /// either kind (hybrid Unix socket after `CONNECT`, or `AF_VSOCK`); closing
    /// the session shuts the socket down. The stream's own timeouts are left as
    /// they are: the session bounds every call with its own deadline.
    pub fn vsock_stream(
        stream: Stream,
        framing: Framing,
        peer: impl Into<String>,
    ) -> Result<Transport, McpError> {
        Transport::socket(stream, framing, peer.into(), "MCP vsock stream")
    }

    /// Reader, writer and guard on clones of one socket; `what` names it in
    /// a failed shutdown.
    fn socket(
        stream: Stream,
        framing: Framing,
        peer: String,
        what: &'static str,
    ) -> Result<Transport, McpError> {
        let clone = |s: &Stream| {
            s.try_clone()
                .map_err(|e| McpError::io(format!("try_clone of the socket to {peer}"), e))
        };
        let reader = clone(&stream)?;
        let guard = SocketGuard {
            stream: clone(&stream)?,
            what,
        };
        Ok(
            Transport::new(Box::new(reader), Box::new(stream), framing, peer)
                .with_guard(Arc::new(guard)),
        )
    }

    /// The framing in use.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The peer's description.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The server's pid, when the transport owns a process.
    pub fn pid(&self) -> Option<u32> {
        self.guard.as_ref().and_then(|g| g.pid())
    }
}

/// Shuts a socket down (both directions) so the session's reader sees end of file.
struct SocketGuard {
    stream: Stream,
    /// What the socket is, in a failed shutdown's error.
    what: &'static str,
}

impl TransportGuard for SocketGuard {
    fn shutdown(&self) -> io::Result<CloseOutcome> {
        match self.stream.shutdown(Shutdown::Both) {
            Ok(()) => Ok(CloseOutcome::default()),
            // Already disconnected by the peer: nothing left to end.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(CloseOutcome::default()),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("shutdown of the {}: {e}", self.what),
            )),
        }
    }
}

/// A stdio child is ended by the session through its own shutdown.
impl TransportGuard for StdioChild {
    fn shutdown(&self) -> io::Result<CloseOutcome> {
        StdioChild::shutdown(self)
    }

    fn pid(&self) -> Option<u32> {
        Some(StdioChild::pid(self))
    }

    fn stderr_tail(&self) -> Option<String> {
        Some(StdioChild::stderr_tail(self).contents())
    }

    fn diagnostics(&self, wait: Duration) -> Option<String> {
        StdioChild::diagnostics(self, wait)
    }
}
