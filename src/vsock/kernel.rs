//! Kernel vsock (`AF_VSOCK`): a stream and a listener shaped like
//! `std::net::TcpStream` / `TcpListener`, over nix's socket calls.
//!
//! Connecting to CID 0 (hypervisor), 1 (local loopback) or 2 (the host) is
//! refused before any socket is created: on the development machines CID 2
//! is the machine's own hypervisor, which is not ours, and there is no
//! loopback. ukload only ever connects to guests it started (CID >= 3).

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{self as nixsock, AddressFamily, Backlog, MsgFlags};

use super::sys::{self, Step, Timeout};

/// CIDs at or below this are never connected to (0 hypervisor, 1 loopback,
/// 2 host).
pub const MAX_RESERVED_CID: u32 = libc::VMADDR_CID_HOST;

/// Device whose ioctl tells a guest its own CID.
pub const VSOCK_DEVICE: &str = "/dev/vsock";

/// `IOCTL_VM_SOCKETS_GET_LOCAL_CID` from `<linux/vm_sockets.h>`: `_IO(7, 0xb9)`.
/// Not exported by the libc crate.
const IOCTL_VM_SOCKETS_GET_LOCAL_CID: libc::c_ulong = 0x7b9;

/// Whether `cid` may be the target of a connect: not a reserved CID and not
/// the wildcard `VMADDR_CID_ANY`.
pub fn cid_is_connectable(cid: u32) -> bool {
    cid > MAX_RESERVED_CID && cid != libc::VMADDR_CID_ANY
}

/// The error for a refused CID, shared with [`super::ConnectError`].
pub(crate) fn forbidden_cid_error(cid: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "refusing to connect AF_VSOCK to CID {cid}: CIDs 0-2 are the hypervisor, loopback \
             and host, and {} is the wildcard; only guest CIDs >= 3 are valid targets",
            libc::VMADDR_CID_ANY
        ),
    )
}

fn sockaddr(cid: u32, port: u32) -> nixsock::VsockAddr {
    nixsock::VsockAddr::new(cid, port)
}

/// A vsock peer address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VsockAddr {
    pub cid: u32,
    pub port: u32,
}

impl fmt::Display for VsockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vsock:{}:{}", self.cid, self.port)
    }
}

/// A connected `AF_VSOCK` stream socket.
#[derive(Debug)]
pub struct VsockStream {
    fd: OwnedFd,
}

impl VsockStream {
    /// Connects to `cid:port` within `timeout`. CIDs 0, 1, 2 and the
    /// wildcard are refused with `PermissionDenied` without creating a socket.
    pub fn connect_timeout(cid: u32, port: u32, timeout: Duration) -> io::Result<VsockStream> {
        Self::connect_deadline(cid, port, sys::Until::deadline(Instant::now() + timeout))
            .map_err(|(_, e)| e)
    }

    /// Like [`VsockStream::connect_timeout`], saying which step failed
    /// (and cut short by `until`'s stop flag).
    pub(crate) fn connect_deadline(
        cid: u32,
        port: u32,
        until: sys::Until<'_>,
    ) -> Result<VsockStream, (Step, io::Error)> {
        if !cid_is_connectable(cid) {
            return Err((Step::Socket, forbidden_cid_error(cid)));
        }
        let addr = sockaddr(cid, port);
        let fd = sys::connect_deadline(AddressFamily::Vsock, &addr, until)?;
        Ok(VsockStream { fd })
    }

    pub fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        sys::set_timeout(self.fd.as_fd(), Timeout::Read, d)
    }

    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        sys::set_timeout(self.fd.as_fd(), Timeout::Write, d)
    }

    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        sys::timeout(self.fd.as_fd(), Timeout::Read)
    }

    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        sys::timeout(self.fd.as_fd(), Timeout::Write)
    }

    /// A second handle on the same socket (for a reader and a writer thread).
    pub fn try_clone(&self) -> io::Result<VsockStream> {
        Ok(VsockStream {
            fd: self.fd.try_clone()?,
        })
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        sys::shutdown(self.fd.as_fd(), how)
    }
}

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Read for &VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(nixsock::recv(self.fd.as_raw_fd(), buf, MsgFlags::empty())?)
    }
}

impl Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for &VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // MSG_NOSIGNAL: a peer that went away is an EPIPE error, not a
        // process-killing SIGPIPE.
        Ok(nixsock::send(
            self.fd.as_raw_fd(),
            buf,
            MsgFlags::MSG_NOSIGNAL,
        )?)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for VsockStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for VsockStream {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A listening `AF_VSOCK` socket bound to `VMADDR_CID_ANY`.
#[derive(Debug)]
pub struct VsockListener {
    fd: OwnedFd,
    port: u32,
}

impl VsockListener {
    /// Binds `VMADDR_CID_ANY:port` and listens.
    pub fn bind(port: u32) -> io::Result<VsockListener> {
        let fd = sys::socket(AddressFamily::Vsock, false)?;
        nixsock::bind(fd.as_raw_fd(), &sockaddr(libc::VMADDR_CID_ANY, port))?;
        let backlog = Backlog::new(sys::LISTEN_BACKLOG).map_err(io::Error::from)?;
        nixsock::listen(&fd, backlog)?;
        Ok(VsockListener { fd, port })
    }

    /// The port this listener was bound to.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Waits for a connection (blocking).
    pub fn accept(&self) -> io::Result<(VsockStream, VsockAddr)> {
        let (fd, addr) = sys::accept_vsock(self.fd.as_fd())?;
        Ok((
            VsockStream { fd },
            VsockAddr {
                cid: addr.cid(),
                port: addr.port(),
            },
        ))
    }

    /// Waits at most `timeout` for a connection; `None` if none came.
    pub fn accept_timeout(
        &self,
        timeout: Duration,
    ) -> io::Result<Option<(VsockStream, VsockAddr)>> {
        if !sys::poll_one(self.fd.as_fd(), nix::poll::PollFlags::POLLIN, Some(timeout))? {
            return Ok(None);
        }
        self.accept().map(Some)
    }

    /// This machine's CID (`IOCTL_VM_SOCKETS_GET_LOCAL_CID` on `/dev/vsock`),
    /// which is how a guest learns the CID its VMM gave it.
    pub fn local_cid() -> io::Result<u32> {
        local_cid()
    }
}

impl AsFd for VsockListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// See [`VsockListener::local_cid`].
pub fn local_cid() -> io::Result<u32> {
    let dev = File::open(VSOCK_DEVICE)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {VSOCK_DEVICE}: {e}")))?;
    let mut cid: libc::c_uint = 0;
    // SAFETY: this ioctl writes one unsigned int through the pointer, which
    // points to a live, writable `cid`; the fd is open for the call.
    let rc = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            IOCTL_VM_SOCKETS_GET_LOCAL_CID as _,
            &mut cid as *mut libc::c_uint,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("ioctl(IOCTL_VM_SOCKETS_GET_LOCAL_CID) on {VSOCK_DEVICE}: {e}"),
        ));
    }
    Ok(cid)
}
