//! The syscall boundary of the transport: thin wrappers over libc socket
//! calls, each `unsafe` block with the reason it is sound. Everything above
//! this file is safe Rust.

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
pub(crate) const LISTEN_BACKLOG: libc::c_int = 16;

/// Creates a socket with `SOCK_CLOEXEC` (and `SOCK_NONBLOCK` if asked), so
/// that no fd leaks into children the supervisor spawns.
pub(crate) fn socket(domain: libc::c_int, nonblocking: bool) -> io::Result<OwnedFd> {
    let mut ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    if nonblocking {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: plain syscall with integer arguments; the result is checked.
    let fd = unsafe { libc::socket(domain, ty, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own and nothing else refers to.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Turns `O_NONBLOCK` on or off.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL on a valid, borrowed descriptor.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: F_SETFL with an int flag set on a valid, borrowed descriptor.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
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

mod sealed {
    pub trait Sealed {}
    impl Sealed for libc::sockaddr_un {}
    impl Sealed for libc::sockaddr_vm {}
}

/// A kernel socket address structure the kernel may read from and write
/// into: only `sockaddr_un` and `sockaddr_vm` (sealed). Why: the generic
/// `connect`/`accept` helpers hand `size_of::<A>()` bytes of `A` to the
/// kernel, which is sound only for plain-old-data socket addresses, never
/// for an arbitrary type a caller might pass.
pub(crate) trait SockAddr: sealed::Sealed + Copy {}
impl SockAddr for libc::sockaddr_un {}
impl SockAddr for libc::sockaddr_vm {}

/// Connects a socket of `domain` to the address `addr` (of `len` bytes)
/// before `deadline`: non-blocking `connect`, `poll` for writability with the
/// time left, then `SO_ERROR`; the returned socket is blocking again.
///
/// A deadline that passes is reported as `ETIMEDOUT` from `poll`, a stop
/// flag that is set as `ECANCELED` from `poll`.
pub(crate) fn connect_deadline<A: SockAddr>(
    domain: libc::c_int,
    addr: &A,
    until: Until<'_>,
) -> Result<OwnedFd, (Step, io::Error)> {
    let fd = socket(domain, true).map_err(|e| (Step::Socket, e))?;
    // SAFETY: `A` is a socket address structure (sealed `SockAddr`), valid
    // and initialized for `size_of::<A>()` bytes across the call; `fd` is ours.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (addr as *const A).cast::<libc::sockaddr>(),
            mem::size_of::<A>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINPROGRESS) | Some(libc::EALREADY) | Some(libc::EINTR) => {
                wait_connected(fd.as_fd(), until)?;
            }
            _ => return Err((Step::Connect, err)),
        }
    }
    set_nonblocking(fd.as_fd(), false).map_err(|e| (Step::Fcntl, e))?;
    Ok(fd)
}

fn wait_connected(fd: BorrowedFd<'_>, until: Until<'_>) -> Result<(), (Step, io::Error)> {
    loop {
        let wait = until.next_wait().map_err(Expired::as_step_error)?;
        match poll_one(fd, libc::POLLOUT, Some(wait)) {
            Ok(true) => break,
            Ok(false) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((Step::Poll, e)),
        }
    }
    match so_error(fd) {
        Ok(0) => Ok(()),
        Ok(errno) => Err((Step::Connect, io::Error::from_raw_os_error(errno))),
        Err(e) => Err((Step::SoError, e)),
    }
}

/// The pending error of a socket (`SO_ERROR`), 0 if none.
fn so_error(fd: BorrowedFd<'_>) -> io::Result<i32> {
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for writes and `len` holds the size
    // of `err`, as getsockopt(SO_ERROR) requires.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(err)
}

/// Waits until `fd` has one of `events` or `timeout` passes (`None`: no
/// limit). Returns whether it is ready. Errors and hang-ups count as ready:
/// the following syscall reports them.
pub(crate) fn poll_one(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    timeout: Option<Duration>,
) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = match timeout {
        None => -1,
        // Round up so that a sub-millisecond remainder still waits.
        Some(d) => d.as_micros().div_ceil(1000).min(libc::c_int::MAX as u128) as libc::c_int,
    };
    // SAFETY: `pfd` is one valid pollfd and we pass a count of 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc > 0)
}

fn timeval_from(d: Option<Duration>) -> io::Result<libc::timeval> {
    match d {
        None => Ok(libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        }),
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
            Ok(libc::timeval {
                tv_sec: secs,
                tv_usec: usec,
            })
        }
    }
}

/// Sets `SO_RCVTIMEO` or `SO_SNDTIMEO` (`None` clears it), as std does.
pub(crate) fn set_timeout(fd: RawFd, opt: libc::c_int, d: Option<Duration>) -> io::Result<()> {
    let tv = timeval_from(d)?;
    // SAFETY: `tv` is a valid timeval and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&tv as *const libc::timeval).cast(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads `SO_RCVTIMEO` or `SO_SNDTIMEO` (`None` when unset).
pub(crate) fn timeout(fd: RawFd, opt: libc::c_int) -> io::Result<Option<Duration>> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: `tv` and `len` are valid for writes; `len` holds `tv`'s size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut tv as *mut libc::timeval).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if tv.tv_sec == 0 && tv.tv_usec == 0 {
        return Ok(None);
    }
    Ok(Some(
        Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64),
    ))
}

/// `accept4` with `SOCK_CLOEXEC`, retried on `EINTR`; the peer address is
/// written into `addr` (whose size must match the socket's family).
pub(crate) fn accept<A: SockAddr>(fd: RawFd, addr: &mut A) -> io::Result<OwnedFd> {
    loop {
        let mut len = mem::size_of::<A>() as libc::socklen_t;
        // SAFETY: `addr` is a socket address structure (sealed `SockAddr`:
        // plain data, any bytes valid) writable for `len` bytes, and `len`
        // is a valid in/out length, as accept4 requires.
        let rc = unsafe {
            libc::accept4(
                fd,
                (addr as *mut A).cast::<libc::sockaddr>(),
                &mut len,
                libc::SOCK_CLOEXEC,
            )
        };
        if rc >= 0 {
            // SAFETY: accept4 returned a fresh descriptor that we now own.
            return Ok(unsafe { OwnedFd::from_raw_fd(rc) });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `shutdown(2)`.
pub(crate) fn shutdown(fd: RawFd, how: std::net::Shutdown) -> io::Result<()> {
    let how = match how {
        std::net::Shutdown::Read => libc::SHUT_RD,
        std::net::Shutdown::Write => libc::SHUT_WR,
        std::net::Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: plain syscall on a descriptor the caller owns.
    if unsafe { libc::shutdown(fd, how) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
