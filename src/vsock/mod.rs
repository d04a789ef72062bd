//! vsock transport: `AF_VSOCK` through nix (host and guest) and the hybrid
//! Unix-socket form (Firecracker / vhost-device-vsock: `CONNECT <port>\n` ->
//! `OK <host_port>\n`). Mirrors `std::net` names.
//!
//! - [`kernel`]: `VsockStream` / `VsockListener` over raw `AF_VSOCK` sockets.
//! - [`hybrid`]: the Unix-socket handshake, both client and server side.
//! - `sys`: the syscall boundary (nix calls, and the transport's one `unsafe`
//!   block besides `kernel::local_cid`'s ioctl: `accept4` with the peer address).
//!
//! [`connect`] is what the host uses to reach a guest port; every step of it
//! is bounded by one deadline, and [`ConnectError::is_retryable`] tells a
//! guest that is not up yet from a mistake that retrying cannot fix.

pub mod hybrid;
pub mod kernel;
mod sys;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

pub use hybrid::{HybridListener, HANDSHAKE_TIMEOUT, MAX_HANDSHAKE_LINE};
pub use kernel::{local_cid, VsockAddr, VsockListener, VsockStream};
pub use sys::STOP_POLL;

use crate::framing::Timeouts;
use hybrid::LineError;
use sys::{Step, Until};

/// Where a host connects to reach a guest port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Kernel vsock: `AF_VSOCK` to `cid:port` (never CID 0, 1 or 2 from a host).
    Vsock { cid: u32, port: u32 },
    /// Hybrid: Unix socket at `path`, then `CONNECT port`.
    Hybrid { path: PathBuf, port: u32 },
}

impl Endpoint {
    /// The guest port this endpoint reaches.
    pub fn port(&self) -> u32 {
        match self {
            Endpoint::Vsock { port, .. } | Endpoint::Hybrid { port, .. } => *port,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Endpoint::Hybrid { path, port } => write!(f, "uds:{}:{port}", path.display()),
        }
    }
}

/// A connected stream of either kind.
#[derive(Debug)]
pub enum Stream {
    Unix(UnixStream),
    Vsock(VsockStream),
}

impl Stream {
    pub fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(d),
            Stream::Vsock(s) => s.set_read_timeout(d),
        }
    }

    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(d),
            Stream::Vsock(s) => s.set_write_timeout(d),
        }
    }

    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        match self {
            Stream::Unix(s) => s.read_timeout(),
            Stream::Vsock(s) => s.read_timeout(),
        }
    }

    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        match self {
            Stream::Unix(s) => s.write_timeout(),
            Stream::Vsock(s) => s.write_timeout(),
        }
    }

    /// A second handle on the same connection (e.g. one thread reads while
    /// another writes).
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Vsock(s) => Stream::Vsock(s.try_clone()?),
        })
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.shutdown(how),
            Stream::Vsock(s) => s.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Vsock(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Vsock(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Vsock(s) => s.flush(),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Vsock(s) => s.as_fd(),
        }
    }
}

impl Timeouts for Stream {
    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        Stream::set_read_timeout(self, d)
    }
    fn read_timeout(&self) -> io::Result<Option<Duration>> {
        Stream::read_timeout(self)
    }
    fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        Stream::set_write_timeout(self, d)
    }
    fn write_timeout(&self) -> io::Result<Option<Duration>> {
        Stream::write_timeout(self)
    }
}

impl Timeouts for VsockStream {
    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        VsockStream::set_read_timeout(self, d)
    }
    fn read_timeout(&self) -> io::Result<Option<Duration>> {
        VsockStream::read_timeout(self)
    }
    fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        VsockStream::set_write_timeout(self, d)
    }
    fn write_timeout(&self) -> io::Result<Option<Duration>> {
        VsockStream::write_timeout(self)
    }
}

/// errno values that mean "the guest (or its VMM) is not up yet": the
/// socket file is not there yet, nothing listens yet, the VMM reset the
/// connection because the guest does not listen yet, the vsock device is
/// not ready, a connect timed out, or the listener's backlog is full.
const RETRYABLE_ERRNOS: &[i32] = &[
    libc::ENOENT,
    libc::ECONNREFUSED,
    libc::ECONNRESET,
    libc::ENODEV,
    libc::ETIMEDOUT,
    libc::EAGAIN,
    libc::EPIPE,
];

/// Why a connect failed; `is_retryable` says "the guest is not up yet".
#[derive(Debug)]
pub enum ConnectError {
    /// CID 0, 1, 2 or the wildcard: refused before creating any socket.
    ForbiddenCid { cid: u32 },
    /// The Unix socket path does not fit `sun_path` or contains NUL.
    BadPath { path: PathBuf },
    /// A syscall failed.
    Sys {
        endpoint: Endpoint,
        syscall: &'static str,
        source: io::Error,
    },
    /// The deadline passed during `stage` (connect or handshake).
    TimedOut {
        endpoint: Endpoint,
        stage: &'static str,
        after: Duration,
    },
    /// The stop flag of [`connect_interruptible`] was set during `stage`.
    Interrupted {
        endpoint: Endpoint,
        stage: &'static str,
        after: Duration,
    },
    /// The VMM closed the connection before answering `OK` (in hybrid vsock
    /// this is how "nothing listens on that guest port yet" looks).
    HandshakeClosed { endpoint: Endpoint, got: String },
    /// The reply to `CONNECT` was not `OK <port>`: this is not a hybrid
    /// vsock socket, or not a VMM we understand.
    BadHandshake { endpoint: Endpoint, got: String },
}

impl ConnectError {
    /// True when retrying may succeed because the guest is not up yet.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectError::ForbiddenCid { .. }
            | ConnectError::BadPath { .. }
            | ConnectError::BadHandshake { .. }
            | ConnectError::Interrupted { .. } => false,
            ConnectError::TimedOut { .. } | ConnectError::HandshakeClosed { .. } => true,
            ConnectError::Sys { source, .. } => source
                .raw_os_error()
                .is_some_and(|e| RETRYABLE_ERRNOS.contains(&e)),
        }
    }

    /// The errno behind the failure, if a syscall failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ConnectError::Sys { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::ForbiddenCid { cid } => {
                write!(f, "{}", kernel::forbidden_cid_error(*cid))
            }
            ConnectError::BadPath { path } => write!(
                f,
                "unix socket path {} is longer than {} bytes or contains NUL; use a shorter \
                 state directory",
                path.display(),
                hybrid::MAX_UNIX_PATH
            ),
            ConnectError::Sys {
                endpoint,
                syscall,
                source,
            } => write!(f, "connecting to {endpoint}: {syscall}: {source}"),
            ConnectError::TimedOut {
                endpoint,
                stage,
                after,
            } => write!(
                f,
                "connecting to {endpoint}: {stage} timed out after {after:?}"
            ),
            ConnectError::Interrupted {
                endpoint,
                stage,
                after,
            } => write!(
                f,
                "connecting to {endpoint}: interrupted by signal during the {stage} after {after:?}"
            ),
            ConnectError::HandshakeClosed { endpoint, got } => write!(
                f,
                "connecting to {endpoint}: closed during the handshake (got {got:?}); \
                 is the guest listening yet?"
            ),
            ConnectError::BadHandshake { endpoint, got } => write!(
                f,
                "connecting to {endpoint}: expected \"OK <port>\" after CONNECT, got {got:?}; \
                 is this a hybrid vsock socket?"
            ),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectError::Sys { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Connects within `timeout` (including the hybrid handshake).
///
/// The returned stream has no read or write timeout set: callers set their
/// own. For kernel vsock, CIDs 0, 1 and 2 are refused without a socket.
pub fn connect(ep: &Endpoint, timeout: Duration) -> Result<Stream, ConnectError> {
    connect_until(ep, timeout, None)
}

/// [`connect`] that also gives up, with [`ConnectError::Interrupted`], within
/// [`STOP_POLL`] of `stop` being set (by SIGINT/SIGTERM): every wait of the
/// connect and of the hybrid handshake is sliced to look at the flag.
pub fn connect_interruptible(
    ep: &Endpoint,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<Stream, ConnectError> {
    connect_until(ep, timeout, Some(stop))
}

fn connect_until(
    ep: &Endpoint,
    timeout: Duration,
    stop: Option<&AtomicBool>,
) -> Result<Stream, ConnectError> {
    let start = Instant::now();
    let until = Until {
        deadline: start + timeout,
        stop,
    };
    let sys_err = |(step, source): (Step, io::Error)| connect_error(ep, start, step, source);
    match ep {
        Endpoint::Vsock { cid, port } => {
            if !kernel::cid_is_connectable(*cid) {
                return Err(ConnectError::ForbiddenCid { cid: *cid });
            }
            VsockStream::connect_deadline(*cid, *port, until)
                .map(Stream::Vsock)
                .map_err(sys_err)
        }
        Endpoint::Hybrid { path, port } => {
            if !hybrid::path_fits(path) {
                return Err(ConnectError::BadPath { path: path.clone() });
            }
            let stream = hybrid::unix_connect_deadline(path, until).map_err(sys_err)?;
            client_handshake(ep, stream, *port, start, until).map(Stream::Unix)
        }
    }
}

/// A failed connect step as [`ConnectError`]: `poll`'s ETIMEDOUT is the
/// deadline, its ECANCELED the stop flag, anything else the syscall's error.
fn connect_error(ep: &Endpoint, start: Instant, step: Step, source: io::Error) -> ConnectError {
    match (step, source.raw_os_error()) {
        (Step::Poll, Some(libc::ETIMEDOUT)) => ConnectError::TimedOut {
            endpoint: ep.clone(),
            stage: "connect",
            after: start.elapsed(),
        },
        (Step::Poll, Some(libc::ECANCELED)) => ConnectError::Interrupted {
            endpoint: ep.clone(),
            stage: "connect",
            after: start.elapsed(),
        },
        _ => ConnectError::Sys {
            endpoint: ep.clone(),
            syscall: step.name(),
            source,
        },
    }
}

/// The first step of a hybrid connect for an event loop: the Unix socket is
/// connected (waiting at most `timeout` if the listener's backlog is full)
/// and `CONNECT <port>\n` is written; the caller reads the `OK` line with
/// [`check_handshake_line`]. The stream comes back non-blocking. Errors are
/// worded as [`connect`]'s.
pub fn hybrid_connect_start(
    path: &std::path::Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, ConnectError> {
    let ep = Endpoint::Hybrid {
        path: path.to_path_buf(),
        port,
    };
    if !hybrid::path_fits(path) {
        return Err(ConnectError::BadPath {
            path: path.to_path_buf(),
        });
    }
    let start = Instant::now();
    let until = Until {
        deadline: start + timeout,
        stop: None,
    };
    let mut stream = hybrid::unix_connect_deadline(path, until)
        .map_err(|(step, source)| connect_error(&ep, start, step, source))?;
    let hs = Handshake { ep: &ep, start };
    stream
        .set_nonblocking(true)
        .map_err(|e| hs.sys("fcntl(O_NONBLOCK)", e))?;
    let line = hybrid::connect_line(port);
    // A dozen bytes into an empty socket buffer: written at once or not at all.
    match stream.write(line.as_bytes()) {
        Ok(n) if n == line.len() => Ok(stream),
        Ok(_) => Err(hs.sys("write(CONNECT)", io::Error::from(io::ErrorKind::WriteZero))),
        Err(e) => Err(hs.sys("write(CONNECT)", e)),
    }
}

/// Judges what the VMM answered to `CONNECT` so far (`got`, without the
/// newline once `complete`): `Ok(true)` for `OK <port>`, `Ok(false)` when
/// more bytes are needed, or the error [`connect`] would give.
pub fn check_handshake_line(
    ep: &Endpoint,
    got: &[u8],
    complete: bool,
    closed: bool,
) -> Result<bool, ConnectError> {
    let text = || String::from_utf8_lossy(got).into_owned();
    if closed && !complete {
        return Err(ConnectError::HandshakeClosed {
            endpoint: ep.clone(),
            got: text(),
        });
    }
    if !complete {
        if got.len() > hybrid::MAX_HANDSHAKE_LINE {
            return Err(ConnectError::BadHandshake {
                endpoint: ep.clone(),
                got: text(),
            });
        }
        return Ok(false);
    }
    let line = text();
    let line = line.trim_end_matches('\r');
    if hybrid::is_ok_line(line) {
        Ok(true)
    } else {
        Err(ConnectError::BadHandshake {
            endpoint: ep.clone(),
            got: line.to_string(),
        })
    }
}

/// Client half of the hybrid handshake.
fn client_handshake(
    ep: &Endpoint,
    mut stream: UnixStream,
    port: u32,
    start: Instant,
    until: Until<'_>,
) -> Result<UnixStream, ConnectError> {
    let hs = Handshake { ep, start };
    hs.send_connect(&mut stream, port, until)?;
    hs.read_ok(&mut stream, until)?;
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(|e| hs.sys("setsockopt(timeouts)", e))?;
    Ok(stream)
}

/// A client handshake in progress with `ep`, begun at `start`: builds its errors.
struct Handshake<'a> {
    ep: &'a Endpoint,
    start: Instant,
}

impl Handshake<'_> {
    /// A failed `syscall`.
    fn sys(&self, syscall: &'static str, source: io::Error) -> ConnectError {
        ConnectError::Sys {
            endpoint: self.ep.clone(),
            syscall,
            source,
        }
    }

    /// The deadline passed during the handshake.
    fn timed_out(&self) -> ConnectError {
        ConnectError::TimedOut {
            endpoint: self.ep.clone(),
            stage: "handshake",
            after: self.start.elapsed(),
        }
    }

    /// The harness is stopping.
    fn interrupted(&self) -> ConnectError {
        ConnectError::Interrupted {
            endpoint: self.ep.clone(),
            stage: "handshake",
            after: self.start.elapsed(),
        }
    }

    /// Writes the `CONNECT <port>` line.
    fn send_connect(
        &self,
        stream: &mut UnixStream,
        port: u32,
        until: Until<'_>,
    ) -> Result<(), ConnectError> {
        // Written in waits of at most one slice, each bounded by `until`.
        let line = hybrid::connect_line(port);
        let mut sent = 0;
        while sent < line.len() {
            let wait = match until.next_wait() {
                Ok(w) => w,
                Err(sys::Expired::TimedOut) => return Err(self.timed_out()),
                Err(sys::Expired::Interrupted) => return Err(self.interrupted()),
            };
            stream
                .set_write_timeout(Some(wait))
                .map_err(|e| self.sys("setsockopt(SO_SNDTIMEO)", e))?;
            match stream.write(&line.as_bytes()[sent..]) {
                Ok(0) => {
                    return Err(
                        self.sys("write(CONNECT)", io::Error::from(io::ErrorKind::WriteZero))
                    )
                }
                Ok(n) => sent += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(self.sys("write(CONNECT)", e)),
            }
        }
        Ok(())
    }

    /// Reads the reply line and checks it is `OK <port>`.
    fn read_ok(&self, stream: &mut UnixStream, until: Until<'_>) -> Result<(), ConnectError> {
        let ep = self.ep;
        let line = match hybrid::read_line_deadline(stream, until) {
            Ok(line) => line,
            Err(LineError::Closed { got }) => {
                return Err(ConnectError::HandshakeClosed {
                    endpoint: ep.clone(),
                    got,
                })
            }
            Err(LineError::TimedOut) => return Err(self.timed_out()),
            Err(LineError::Interrupted) => return Err(self.interrupted()),
            Err(LineError::TooLong { got }) => {
                return Err(ConnectError::BadHandshake {
                    endpoint: ep.clone(),
                    got,
                })
            }
            Err(LineError::Io(e)) => return Err(self.sys("read(OK)", e)),
        };
        if !hybrid::is_ok_line(&line) {
            return Err(ConnectError::BadHandshake {
                endpoint: ep.clone(),
                got: line,
            });
        }
        Ok(())
    }
}

/// A listening socket of either kind, as the guest agent uses it.
#[derive(Debug)]
pub enum Listener {
    Vsock(VsockListener),
    Hybrid(HybridListener),
}

impl Listener {
    /// The guest port served.
    pub fn port(&self) -> u32 {
        match self {
            Listener::Vsock(l) => l.port(),
            Listener::Hybrid(l) => l.port(),
        }
    }

    /// Waits for the next connection (hybrid: one that completed the
    /// handshake).
    pub fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Vsock(l) => l.accept().map(|(s, _)| Stream::Vsock(s)),
            Listener::Hybrid(l) => l.accept().map(Stream::Unix),
        }
    }

    /// Waits at most `timeout` for a connection (plus, for hybrid, at most
    /// [`HANDSHAKE_TIMEOUT`] for its handshake). `None`: nothing usable came.
    pub fn accept_timeout(&self, timeout: Duration) -> io::Result<Option<Stream>> {
        match self {
            Listener::Vsock(l) => Ok(l.accept_timeout(timeout)?.map(|(s, _)| Stream::Vsock(s))),
            Listener::Hybrid(l) => Ok(l.accept_timeout(timeout)?.map(Stream::Unix)),
        }
    }
}

#[cfg(test)]
mod tests;
