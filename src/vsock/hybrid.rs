//! Hybrid vsock over a Unix socket (Firecracker's design, also Cloud
//! Hypervisor and vhost-device-vsock): the host connects to the VMM's Unix
//! socket, writes `CONNECT <port>\n` and reads `OK <host_port>\n`; from then
//! on the stream is the guest connection.
//!
//! [`HybridListener`] is the other side of that handshake, so that
//! `ukload-guest` running as a plain host process looks exactly like a guest
//! behind a VMM.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use nix::sys::socket::{AddressFamily, UnixAddr};

use super::sys::{self, Expired, Step, Until};

/// Longest handshake line accepted either way (`CONNECT 4294967295\n` is 19
/// bytes); anything longer is not the protocol.
pub const MAX_HANDSHAKE_LINE: usize = 64;

/// How long [`HybridListener`] waits for a client's `CONNECT` line. Keeps a
/// silent client from holding the accept loop.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest Unix socket path: `sun_path` holds 108 bytes including the NUL.
pub const MAX_UNIX_PATH: usize = 107;

/// Why a handshake line could not be read.
#[derive(Debug)]
pub(crate) enum LineError {
    /// The peer closed the stream; `got` is what it sent before.
    Closed {
        got: String,
    },
    /// The deadline passed.
    TimedOut,
    /// The stop flag was set.
    Interrupted,
    /// More than [`MAX_HANDSHAKE_LINE`] bytes without a newline.
    TooLong {
        got: String,
    },
    Io(io::Error),
}

/// Reads one `\n`-terminated line of at most [`MAX_HANDSHAKE_LINE`] bytes,
/// one byte at a time so that nothing after the line is consumed (those
/// bytes belong to the guest connection), before `until` expires.
pub(crate) fn read_line_deadline(
    stream: &mut UnixStream,
    until: Until<'_>,
) -> Result<String, LineError> {
    let mut line = Vec::with_capacity(MAX_HANDSHAKE_LINE);
    let text = |l: &[u8]| String::from_utf8_lossy(l).into_owned();
    loop {
        let wait = until.next_wait().map_err(|e| match e {
            Expired::TimedOut => LineError::TimedOut,
            Expired::Interrupted => LineError::Interrupted,
        })?;
        stream.set_read_timeout(Some(wait)).map_err(LineError::Io)?;
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => return Err(LineError::Closed { got: text(&line) }),
            Ok(_) if byte[0] == b'\n' => {
                let s = text(&line);
                return Ok(s.strip_suffix('\r').unwrap_or(&s).to_string());
            }
            Ok(_) if line.len() == MAX_HANDSHAKE_LINE => {
                return Err(LineError::TooLong { got: text(&line) })
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(LineError::Io(e)),
        }
    }
}

/// The Unix socket address of `path`, or `None` if the path is empty, too
/// long (it must leave room for a terminating NUL) or contains a NUL byte.
fn sockaddr_un(path: &Path) -> Option<UnixAddr> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() > MAX_UNIX_PATH || bytes.contains(&0) || bytes.is_empty() {
        return None;
    }
    UnixAddr::new(path).ok()
}

/// Whether `path` fits in a Unix socket address.
pub fn path_fits(path: &Path) -> bool {
    sockaddr_un(path).is_some()
}

/// Connects a Unix stream socket before `deadline` without ever blocking
/// past it (a blocking `connect` waits while the listener's backlog is
/// full; non-blocking returns `EAGAIN`, which callers retry).
pub(crate) fn unix_connect_deadline(
    path: &Path,
    until: Until<'_>,
) -> Result<UnixStream, (Step, io::Error)> {
    let addr = sockaddr_un(path).ok_or_else(|| {
        (
            Step::Connect,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "unix socket path {} is longer than {MAX_UNIX_PATH} bytes or contains NUL",
                    path.display()
                ),
            ),
        )
    })?;
    let fd = sys::connect_deadline(AddressFamily::Unix, &addr, until)?;
    Ok(UnixStream::from(fd))
}

/// A hybrid-vsock server: a Unix socket that answers `CONNECT <port>` for
/// exactly one port, as a VMM would for a guest listening on that port.
#[derive(Debug)]
pub struct HybridListener {
    listener: UnixListener,
    path: PathBuf,
    port: u32,
    /// (device, inode) of the socket file we created, so that `Drop` only
    /// removes our own file, not one someone re-created at the same path.
    identity: Option<(u64, u64)>,
}

impl HybridListener {
    /// Binds `path`, removing a stale socket file first. A socket file on
    /// which something still accepts connections is left alone
    /// (`AddrInUse`); a path that exists but is not a socket is never
    /// removed (`AlreadyExists`).
    pub fn bind(path: impl AsRef<Path>, port: u32) -> io::Result<HybridListener> {
        let path = path.as_ref().to_path_buf();
        if !path_fits(&path) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "unix socket path {} is longer than {MAX_UNIX_PATH} bytes or contains NUL",
                    path.display()
                ),
            ));
        }
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => {
                let probe_deadline = Instant::now() + HANDSHAKE_TIMEOUT;
                match unix_connect_deadline(&path, Until::deadline(probe_deadline)) {
                    Ok(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("{} is in use by a live listener", path.display()),
                        ))
                    }
                    Err((_, e)) if e.raw_os_error() == Some(libc::EAGAIN) => {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("{} is in use by a busy listener", path.display()),
                        ))
                    }
                    Err(_) => fs::remove_file(&path).map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("removing stale socket {}: {e}", path.display()),
                        )
                    })?,
                }
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket; not removing it",
                        path.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("inspecting {}: {e}", path.display()),
                ))
            }
        }
        let listener = UnixListener::bind(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("binding {}: {e}", path.display())))?;
        let identity = fs::symlink_metadata(&path).ok().map(|m| (m.dev(), m.ino()));
        Ok(HybridListener {
            listener,
            path,
            port,
            identity,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn port(&self) -> u32 {
        self.port
    }

    /// Waits for a client that completes the handshake for our port
    /// (blocking). Clients that ask for another port, send garbage or stay
    /// silent for [`HANDSHAKE_TIMEOUT`] are closed and accepting goes on.
    pub fn accept(&self) -> io::Result<UnixStream> {
        loop {
            let (stream, _) = self.listener.accept()?;
            if let Some(s) = self.handshake(stream) {
                return Ok(s);
            }
        }
    }

    /// Waits at most `timeout` for a connection, then (if one came) runs the
    /// handshake, bounded by [`HANDSHAKE_TIMEOUT`]. `None` if no client came
    /// or it failed the handshake.
    pub fn accept_timeout(&self, timeout: Duration) -> io::Result<Option<UnixStream>> {
        if !sys::poll_one(self.listener.as_fd(), PollFlags::POLLIN, Some(timeout))? {
            return Ok(None);
        }
        let (stream, _) = self.listener.accept()?;
        Ok(self.handshake(stream))
    }

    /// Server half of the handshake; `None` means the client was dropped.
    fn handshake(&self, mut stream: UnixStream) -> Option<UnixStream> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let line = read_line_deadline(&mut stream, Until::deadline(deadline)).ok()?;
        let port: u32 = line.strip_prefix("CONNECT ")?.trim().parse().ok()?;
        if port != self.port {
            return None;
        }
        stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT)).ok()?;
        stream
            .write_all(format!("OK {}\n", self.port).as_bytes())
            .ok()?;
        // Hand over a stream without our handshake timeouts.
        stream.set_read_timeout(None).ok()?;
        stream.set_write_timeout(None).ok()?;
        Some(stream)
    }
}

impl AsFd for HybridListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl Drop for HybridListener {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.identity {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The client's handshake line for `port`.
pub fn connect_line(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// Whether `line` (without its newline) is the VMM's `OK <host_port>`.
pub(crate) fn is_ok_line(line: &str) -> bool {
    line.strip_prefix("OK ")
        .is_some_and(|n| n.trim().parse::<u32>().is_ok())
}
