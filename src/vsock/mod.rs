//! vsock transport: `AF_VSOCK` through libc (host and guest) and the hybrid
//! Unix-socket form (Firecracker / vhost-device-vsock: `CONNECT <port>\n` ->
//! `OK <host_port>\n`). Mirrors `std::net` names.
//! OWNER: transport helper. Contract:

use std::path::PathBuf;
use std::time::Duration;

/// Where a host connects to reach a guest port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Kernel vsock: `AF_VSOCK` to `cid:port` (never CID 0, 1 or 2 from a host).
    Vsock { cid: u32, port: u32 },
    /// Hybrid: Unix socket at `path`, then `CONNECT port`.
    Hybrid { path: PathBuf, port: u32 },
}

/// A connected stream of either kind.
pub enum Stream {
    Unix(std::os::unix::net::UnixStream),
}

/// Why a connect failed; `is_retryable` says "the guest is not up yet".
#[derive(Debug)]
pub struct ConnectError;

impl ConnectError {
    pub fn is_retryable(&self) -> bool {
        todo!()
    }
}

/// Connects within `timeout` (including the hybrid handshake).
pub fn connect(ep: &Endpoint, timeout: Duration) -> Result<Stream, ConnectError> {
    let _ = (ep, timeout);
    todo!()
}
