//! The syscall boundary of the transport: socket calls through nix, plus
//! the one call nix does not shape as we need (`accept4` that returns the
//! peer's address), whose `unsafe` block says why it is sound. The rest of
//! the transport is safe Rust.

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrLike, VsockAddr};
use nix::sys::time::TimeVal;

/// Longest single wait while a stop flag is watched: how late a set flag
/// can be noticed (well inside the ~100 ms a signal must take to end a run).
pub const STOP_POLL: Duration = Duration::from_millis(20);

/// A deadline that a stop flag (SIGINT/SIGTERM) can cut short. Waits under
/// it are taken in slices of at most [`STOP_POLL`] when there is a flag.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Until<'a> {
    pub deadline: Instant,
    pub stop: Option<&'a AtomicBool>,
}

/// Why an [`Until`] gives no more time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expired {
    TimedOut,
    Interrupted,
}

impl<'a> Until<'a> {
    /// Only a deadline.
    pub fn deadline(deadline: Instant) -> Until<'static> {
        Until {
            deadline,
            stop: None,
        }
    }

    /// Whether the stop flag is set.
    pub fn stopped(&self) -> bool {
        self.stop.is_some_and(|s| s.load(Ordering::Relaxed))
    }

    /// How long the next wait may last: the time left, at most
    /// [`STOP_POLL`] with a stop flag; `Err` once stopped or past the deadline.
    pub fn next_wait(&self) -> Result<Duration, Expired> {
        if self.stopped() {
            return Err(Expired::Interrupted);
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Expired::TimedOut);
        }
        Ok(match self.stop {
            Some(_) => left.min(STOP_POLL),
            None => left,
        })
    }
}

impl Expired {
    /// As the error a connect step reports: `ETIMEDOUT` or `ECANCELED` from `poll`.
    pub(crate) fn as_step_error(self) -> (Step, io::Error) {
        let errno = match self {
            Expired::TimedOut => libc::ETIMEDOUT,
            Expired::Interrupted => libc::ECANCELED,
        };
        (Step::Poll, io::Error::from_raw_os_error(errno))
    }
}

/// Backlog of listening sockets: guests are probed by one host at a time, a
/// handful of pending connections is plenty.
pub(crate) const LISTEN_BACKLOG: i32 = 16;

/// Creates a stream socket of `family` with `SOCK_CLOEXEC` (and
/// `SOCK_NONBLOCK` if asked), so that no fd leaks into children the
/// supervisor spawns.
pub(crate) fn socket(family: AddressFamily, nonblocking: bool) -> io::Result<OwnedFd> {
    let mut flags = SockFlag::SOCK_CLOEXEC;
    if nonblocking {
        flags |= SockFlag::SOCK_NONBLOCK;
    }
    Ok(socket::socket(family, SockType::Stream, flags, None)?)
}

/// Turns `O_NONBLOCK` on or off.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags & !OFlag::O_NONBLOCK
    };
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// Which step of a connect failed, for error context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Socket,
    Connect,
    Poll,
    SoError,
    Fcntl,
}

impl Step {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Step::Socket => "socket",
            Step::Connect => "connect",
            Step::Poll => "poll",
            Step::SoError => "getsockopt(SO_ERROR)",
            Step::Fcntl => "fcntl(O_NONBLOCK)",
        }
    }
}

/// Connects a socket of `family` to `addr` before `deadline`: non-blocking
/// `connect`, `poll` for writability with the time left, then `SO_ERROR`;
/// the returned socket is blocking again.
///
/// A deadline that passes is reported as `ETIMEDOUT` from `poll`, a stop
/// flag that is set as `ECANCELED` from `poll`.
pub(crate) fn connect_deadline(
    family: AddressFamily,
    addr: &dyn SockaddrLike,
    until: Until<'_>,
) -> Result<OwnedFd, (Step, io::Error)> {
    let fd = socket(family, true).map_err(|e| (Step::Socket, e))?;
    match socket::connect(fd.as_raw_fd(), addr) {
        Ok(()) => {}
        Err(Errno::EINPROGRESS | Errno::EALREADY | Errno::EINTR) => {
            wait_connected(fd.as_fd(), until)?;
        }
        Err(e) => return Err((Step::Connect, e.into())),
    }
    set_nonblocking(fd.as_fd(), false).map_err(|e| (Step::Fcntl, e))?;
    Ok(fd)
}

fn wait_connected(fd: BorrowedFd<'_>, until: Until<'_>) -> Result<(), (Step, io::Error)> {
    loop {
        let wait = until.next_wait().map_err(Expired::as_step_error)?;
        match poll_one(fd, PollFlags::POLLOUT, Some(wait)) {
            Ok(true) => break,
            Ok(false) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((Step::Poll, e)),
        }
    }
    match socket::getsockopt(&fd, sockopt::SocketError) {
        Ok(0) => Ok(()),
        Ok(errno) => Err((Step::Connect, io::Error::from_raw_os_error(errno))),
        Err(e) => Err((Step::SoError, e.into())),
    }
}

/// `timeout` as `poll` milliseconds (`None`: no limit), rounded up so that
/// a sub-millisecond remainder still waits.
fn poll_timeout(timeout: Option<Duration>) -> PollTimeout {
    match timeout {
        None => PollTimeout::NONE,
        Some(d) => crate::clock::poll_timeout(d),
    }
}

/// Waits until `fd` has one of `events` or `timeout` passes (`None`: no
/// limit). Returns whether it is ready. Errors and hang-ups count as ready:
/// the following syscall reports them.
pub(crate) fn poll_one(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    timeout: Option<Duration>,
) -> io::Result<bool> {
    let mut fds = [PollFd::new(fd, events)];
    Ok(poll(&mut fds, poll_timeout(timeout))? > 0)
}

fn timeval_from(d: Option<Duration>) -> io::Result<TimeVal> {
    match d {
        None => Ok(TimeVal::new(0, 0)),
        Some(d) if d.is_zero() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot set a zero timeout (use None for no timeout)",
        )),
        Some(d) => {
            let secs = d.as_secs().min(libc::time_t::MAX as u64) as libc::time_t;
            let mut usec = d.subsec_micros() as libc::suseconds_t;
            if secs == 0 && usec == 0 {
                // Below one microsecond: the kernel would read 0 as "never".
                usec = 1;
            }
            Ok(TimeVal::new(secs, usec))
        }
    }
}

/// Which socket timeout: `SO_RCVTIMEO` or `SO_SNDTIMEO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timeout {
    Read,
    Write,
}

/// Sets `SO_RCVTIMEO` or `SO_SNDTIMEO` (`None` clears it), as std does.
pub(crate) fn set_timeout(
    fd: BorrowedFd<'_>,
    which: Timeout,
    d: Option<Duration>,
) -> io::Result<()> {
    let tv = timeval_from(d)?;
    match which {
        Timeout::Read => socket::setsockopt(&fd, sockopt::ReceiveTimeout, &tv)?,
        Timeout::Write => socket::setsockopt(&fd, sockopt::SendTimeout, &tv)?,
    }
    Ok(())
}

/// Reads `SO_RCVTIMEO` or `SO_SNDTIMEO` (`None` when unset).
pub(crate) fn timeout(fd: BorrowedFd<'_>, which: Timeout) -> io::Result<Option<Duration>> {
    let tv = match which {
        Timeout::Read => socket::getsockopt(&fd, sockopt::ReceiveTimeout)?,
        Timeout::Write => socket::getsockopt(&fd, sockopt::SendTimeout)?,
    };
    if tv.tv_sec() == 0 && tv.tv_usec() == 0 {
        return Ok(None);
    }
    Ok(Some(
        Duration::from_secs(tv.tv_sec() as u64) + Duration::from_micros(tv.tv_usec() as u64),
    ))
}

/// `accept4` with `SOCK_CLOEXEC` on a vsock listener, retried on `EINTR`,
/// with the peer's address.
///
/// Why not nix's `accept4`: it passes no address buffer, so the peer's CID
/// would need a later `getpeername`, which fails with `ENOTCONN` once a
/// quick peer has already gone. The address buffer is a `sockaddr_vm`
/// only (no generic address type): the kernel writes at most its size.
pub(crate) fn accept_vsock(fd: BorrowedFd<'_>) -> io::Result<(OwnedFd, VsockAddr)> {
    loop {
        let mut addr: libc::sockaddr_vm = *VsockAddr::new(0, 0).as_ref();
        let mut len = mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: `addr` is a sockaddr_vm (plain data, any bytes valid)
        // writable for `len` bytes and `len` a valid in/out length, as
        // accept4 requires; a descriptor it returns is fresh and ours alone.
        let fd = unsafe {
            let rc = libc::accept4(
                fd.as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_vm).cast::<libc::sockaddr>(),
                &mut len,
                libc::SOCK_CLOEXEC,
            );
            (rc >= 0).then(|| OwnedFd::from_raw_fd(rc))
        };
        match fd {
            Some(fd) => return Ok((fd, VsockAddr::new(addr.svm_cid, addr.svm_port))),
            None => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

/// `shutdown(2)`.
pub(crate) fn shutdown(fd: BorrowedFd<'_>, how: std::net::Shutdown) -> io::Result<()> {
    let how = match how {
        std::net::Shutdown::Read => socket::Shutdown::Read,
        std::net::Shutdown::Write => socket::Shutdown::Write,
        std::net::Shutdown::Both => socket::Shutdown::Both,
    };
    Ok(socket::shutdown(fd.as_raw_fd(), how)?)
}
