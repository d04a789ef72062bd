//! Reading `/proc`: the process table, ukload's environment markers, memory
//! figures, and signalling without PID-reuse races.
//!
//! Why `/proc` and not the processes ukload spawned: VMMs daemonize (kraft's
//! QEMU forks, `setsid`s and forks again), so the only things that reliably
//! follow an instance are its environment markers ([`crate::ENV_RUN`],
//! [`crate::ENV_INSTANCE`], [`crate::ENV_CID`]), which every descendant
//! inherits, and the parent links in `/proc/PID/stat`.
//!
//! Only processes of our own uid (real and effective) count as marked:
//! anyone can put `UKLOAD_RUN=...` in an environment, so another user's
//! process is never measured, waited for or signalled as ours
//! ([`scan_marked_owned_by`]).
//!
//! Everything here is a snapshot: a process can exit between two reads. Readers
//! therefore skip processes that vanished, and [`signal_if_marked`] signals via a
//! pidfd so that a PID recycled in the meantime is never hit.
//!
//! `stat` (the process table), `smaps_rollup` and `/proc/uptime` are read
//! with the procfs crate. Three readers stay ours, for reasons measured or
//! stated where they are: `environ` and the `Uid:` line of `status` (the
//! marker scan, the hot path of teardown and of the memory phase, where
//! procfs measured two to three times slower) and `cmdline` (procfs refuses
//! non-UTF-8 arguments). `pidfd_open` and `pidfd_send_signal` have no nix wrapper and
//! are the two `unsafe` blocks of this file.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::killpg;
use nix::unistd::Pid;
use procfs::{Current, FromRead, ProcError};

use crate::{ENV_CID, ENV_INSTANCE, ENV_RUN};

/// Root of the proc filesystem.
const PROC_ROOT: &str = "/proc";

/// An I/O error on a `/proc` file, carrying the path so the message says what
/// was being read. Wrapped in an [`io::Error`] of the same kind.
#[derive(Debug)]
pub struct ProcIoError {
    /// The file (or directory) being read.
    pub path: PathBuf,
    /// What went wrong.
    pub source: io::Error,
}

impl fmt::Display for ProcIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for ProcIoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Wraps `e` with the path it concerns, keeping its [`io::ErrorKind`]; the
/// original errno stays reachable through [`os_errno`].
fn with_path(e: io::Error, path: &Path) -> io::Error {
    let kind = e.kind();
    io::Error::new(
        kind,
        ProcIoError {
            path: path.to_path_buf(),
            source: e,
        },
    )
}

/// The errno behind `e`, looking through a [`ProcIoError`] wrapper.
pub fn os_errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<ProcIoError>())
            .and_then(|p| p.source.raw_os_error())
    })
}

/// True if `e` means "this process no longer exists (or has no address space
/// any more)": `ENOENT` on its `/proc` directory or `ESRCH`, which the kernel
/// returns for zombies and kernel threads on `environ` and `smaps_rollup`.
pub fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || os_errno(e) == Some(libc::ESRCH)
}

/// A procfs error as an [`io::Error`] about `path`, keeping what callers test:
/// a process that is gone (procfs maps `ENOENT` and `ESRCH` to `NotFound`)
/// is [`io::ErrorKind::NotFound`], so [`is_gone`] holds for it.
fn from_procfs(e: ProcError, path: &Path) -> io::Error {
    let e = match e {
        ProcError::NotFound(_) => io::Error::from(io::ErrorKind::NotFound),
        ProcError::PermissionDenied(_) => io::Error::from_raw_os_error(libc::EACCES),
        ProcError::Io(e, _) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, format!("malformed: {other}")),
    };
    with_path(e, path)
}

fn proc_path(pid: i32, file: &str) -> PathBuf {
    Path::new(PROC_ROOT).join(pid.to_string()).join(file)
}

fn read_proc(pid: i32, file: &str) -> io::Result<Vec<u8>> {
    let path = proc_path(pid, file);
    fs::read(&path).map_err(|e| with_path(e, &path))
}

/// One line of `/proc/PID/stat`, the fields ukload needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub ppid: i32,
    /// Process group id.
    pub pgid: i32,
    /// Session id.
    pub sid: i32,
    /// Controlling terminal (`tty_nr`); 0 when there is none.
    pub tty_nr: i32,
    /// `R`, `S`, `D`, `Z` (zombie), `T` (stopped), `t`, `X`, `I` ...
    pub state: char,
    /// Start time in clock ticks since boot; with `pid` it identifies a
    /// process across PID reuse.
    pub start_ticks: u64,
    /// The command name (up to 15 bytes, may contain spaces and parentheses).
    pub comm: String,
}

impl From<procfs::process::Stat> for ProcStat {
    fn from(st: procfs::process::Stat) -> ProcStat {
        ProcStat {
            pid: st.pid,
            ppid: st.ppid,
            pgid: st.pgrp,
            sid: st.session,
            tty_nr: st.tty_nr,
            state: st.state,
            start_ticks: st.starttime,
            comm: st.comm,
        }
    }
}

impl ProcStat {
    /// True for a zombie (exited, not yet reaped) or a dead task.
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }
}

/// Every PID currently listed in `/proc` (thread-group leaders only, not
/// threads), in ascending order. Unreadable `/proc` gives an empty list.
/// (A directory listing: procfs's iterator would open every process's
/// directory, which a list of numbers does not need.)
pub fn list_pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir(PROC_ROOT) else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = dir
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// Reads and parses `/proc/PID/stat`.
pub fn stat(pid: i32) -> io::Result<ProcStat> {
    let path = proc_path(pid, "stat");
    procfs::process::Stat::from_file(&path)
        .map(ProcStat::from)
        .map_err(|e| from_procfs(e, &path))
}

/// A snapshot of the process table, in ascending PID order; processes that
/// vanish while it is read are skipped.
///
/// procfs's `stat` parser measured as fast as the hand parser it replaced:
/// about 1080 processes, release build, three runs on a loaded machine,
/// 14.7-21.7 ms per pass against 16.6-19.6 ms (examples/proc_table_bench.rs).
pub fn table() -> Vec<ProcStat> {
    list_pids()
        .into_iter()
        .filter_map(|p| stat(p).ok())
        .collect()
}

/// The command line, arguments separated by spaces (lossy UTF-8). Kernel
/// threads and zombies have an empty `cmdline`; they are shown as `[comm]`,
/// like ps(1) does.
///
/// Read here, not with procfs: procfs's `cmdline` fails on an argument that
/// is not UTF-8 and drops empty arguments, and this is for showing a
/// process to a user as it was started.
pub fn cmdline(pid: i32) -> io::Result<String> {
    let raw = read_proc(pid, "cmdline")?;
    let trimmed = match raw.iter().rposition(|&b| b != 0) {
        Some(last) => &raw[..=last],
        None => &raw[..0],
    };
    if trimmed.is_empty() {
        return Ok(format!("[{}]", stat(pid)?.comm));
    }
    let spaced: Vec<u8> = trimmed
        .iter()
        .map(|&b| if b == 0 { b' ' } else { b })
        .collect();
    Ok(String::from_utf8_lossy(&spaced).into_owned())
}

/// Looks `name` up in the raw NUL-separated contents of an `environ` file.
fn find_var(environ: &[u8], name: &str) -> Option<String> {
    let prefix = name.as_bytes();
    environ.split(|&b| b == 0).find_map(|entry| {
        let value = entry.strip_prefix(prefix)?.strip_prefix(b"=")?;
        Some(String::from_utf8_lossy(value).into_owned())
    })
}

/// The value of environment variable `name` in process `pid`'s initial
/// environment (what it was exec'd with). `Ok(None)` if absent.
///
/// Reading another user's environment needs root; zombies and kernel
/// threads fail with `ESRCH` (see [`is_gone`]).
///
/// Read here, not with procfs: the marker scan reads every process's
/// environment and is the hot path of teardown and of the memory phase.
/// procfs builds a map of every variable: 1000 processes, release build,
/// three runs, 32-43 ms per pass with procfs against 22-28 ms with this
/// reader; the whole marker scan (environ, status, stat) 128-173 ms with
/// procfs against 48-78 ms (examples/proc_table_bench.rs).
pub fn environ_var(pid: i32, name: &str) -> io::Result<Option<String>> {
    Ok(find_var(&read_proc(pid, "environ")?, name))
}

/// A process carrying ukload's markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marked {
    pub pid: i32,
    /// Value of `UKLOAD_RUN`.
    pub run: String,
    /// Value of `UKLOAD_INSTANCE`, if present and numeric.
    pub instance: Option<u32>,
    /// Value of `UKLOAD_CID`, if present and numeric.
    pub cid: Option<u32>,
    /// Its stat, read after its environment (so `state` is fresh; `Z` = zombie).
    pub stat: ProcStat,
}

/// Every process of ours (real and effective uid equal to our effective uid)
/// whose environment has `UKLOAD_RUN` (equal to `run` if given), except the
/// calling process. See [`scan_marked_in`].
pub fn scan_marked(run: Option<&str>) -> Vec<Marked> {
    scan_marked_in(&table(), run)
}

/// Like [`scan_marked`] over an existing snapshot `table`: only processes
/// owned by us count (see [`scan_marked_owned_by`]).
pub fn scan_marked_in(table: &[ProcStat], run: Option<&str>) -> Vec<Marked> {
    scan_marked_owned_by(table, run, Some(euid()))
}

/// The marker scan over `table`, keeping only processes whose real and
/// effective uid are `owner` (`None`: any owner, for diagnostics only).
///
/// Why the owner filter: anyone can put `UKLOAD_RUN=<a root run's id>` or
/// `UKLOAD_CID=<n>` in their environment. Without it, another user's process
/// was counted in a root instance's memory, blocked root's CIDs, and could be
/// reported as a survivor. ukload's own processes run as the harness's user.
///
/// Processes whose environment cannot be read are skipped (other users'
/// without root; the kernel also refuses zombies' environments, so a process
/// that already exited is normally not found; one that exits during the scan
/// is returned with state `Z`). Each hit is re-stat'ed after its environment
/// and owner were read, and dropped if its start time changed (the PID was
/// reused).
pub fn scan_marked_owned_by(
    table: &[ProcStat],
    run: Option<&str>,
    owner: Option<u32>,
) -> Vec<Marked> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for st in table {
        if st.pid == me {
            continue;
        }
        let Ok(env) = read_proc(st.pid, "environ") else {
            continue;
        };
        let Some(r) = find_var(&env, ENV_RUN) else {
            continue;
        };
        if run.is_some_and(|want| want != r) {
            continue;
        }
        if let Some(uid) = owner {
            if !owned_by(st.pid, uid) {
                continue;
            }
        }
        let Ok(fresh) = stat(st.pid) else { continue };
        if fresh.start_ticks != st.start_ticks {
            continue;
        }
        found.push(Marked {
            pid: st.pid,
            run: r,
            instance: find_var(&env, ENV_INSTANCE).and_then(|v| v.trim().parse().ok()),
            cid: find_var(&env, ENV_CID).and_then(|v| v.trim().parse().ok()),
            stat: fresh,
        });
    }
    found
}

/// Our effective uid: the owner every marked process must have.
pub fn euid() -> u32 {
    crate::fsafe::euid()
}

/// Real and effective uid of `pid`, from the `Uid:` line of
/// `/proc/PID/status` (`Uid: real effective saved fs`).
///
/// Read here, not with procfs: the marker scan reads the status of every
/// marked process, and procfs parses all of `status` into a map first:
/// 1000 processes, release build, three runs, 65-77 ms per pass with procfs
/// against 23-26 ms with this reader (examples/proc_table_bench.rs).
pub fn uids(pid: i32) -> io::Result<(u32, u32)> {
    let path = proc_path(pid, "status");
    let text = fs::read_to_string(&path).map_err(|e| with_path(e, &path))?;
    parse_status_uids(&text).ok_or_else(|| {
        with_path(
            io::Error::new(io::ErrorKind::InvalidData, "no well-formed Uid: line"),
            &path,
        )
    })
}

/// The real and effective uid of a `/proc/PID/status` text.
fn parse_status_uids(status: &str) -> Option<(u32, u32)> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|v| v.parse::<u32>());
    Some((ids.next()?.ok()?, ids.next()?.ok()?))
}

/// True if `pid`'s real and effective uid are both `uid` (false if it is
/// gone or unreadable).
pub fn owned_by(pid: i32, uid: u32) -> bool {
    matches!(uids(pid), Ok((r, e)) if r == uid && e == uid)
}

/// `root` (if it is in `table`) and all its descendants in `table`,
/// breadth-first through the parent links.
pub fn descendants(root: i32, table: &[ProcStat]) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for st in table {
        if st.pid != st.ppid {
            children.entry(st.ppid).or_default().push(st.pid);
        }
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    if table.iter().any(|s| s.pid == root) {
        out.push(root);
    }
    seen.insert(root);
    let mut queue = VecDeque::from([root]);
    while let Some(p) = queue.pop_front() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            // A snapshot taken while PIDs are recycled can contain a cycle.
            if seen.insert(c) {
                out.push(c);
                queue.push_back(c);
            }
        }
    }
    out
}

/// Clock ticks per second (`USER_HZ`), the unit of `start_ticks`.
pub fn clock_ticks_per_sec() -> u64 {
    procfs::ticks_per_second()
}

/// Seconds since boot, from `/proc/uptime`.
fn uptime() -> io::Result<f64> {
    procfs::Uptime::current()
        .map(|u| u.uptime)
        .map_err(|e| from_procfs(e, &Path::new(PROC_ROOT).join("uptime")))
}

/// How long ago a process with this `start_ticks` started. Zero if
/// `/proc/uptime` is unreadable or the clock arithmetic goes negative.
pub fn age(start_ticks: u64) -> Duration {
    let Ok(up) = uptime() else {
        return Duration::ZERO;
    };
    let started = start_ticks as f64 / clock_ticks_per_sec() as f64;
    Duration::from_secs_f64((up - started).max(0.0))
}

/// Resident and proportional set size of one process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemUsage {
    /// Resident pages, shared ones counted in full.
    pub rss_kb: u64,
    /// Proportional set size: each shared page divided among its sharers, so
    /// the PSS of all processes adds up to the memory really used.
    pub pss_kb: u64,
}

/// The `Rss` and `Pss` of a parsed `smaps_rollup` (procfs gives bytes).
fn usage_of(rollup: &procfs::process::SmapsRollup) -> MemUsage {
    let mut usage = MemUsage::default();
    if let Some(m) = rollup.memory_map_rollup.0.first() {
        let kb = |k: &str| m.extension.map.get(k).map_or(0, |b| b / 1024);
        usage.rss_kb = kb("Rss");
        usage.pss_kb = kb("Pss");
    }
    usage
}

/// Parses the `Rss:` and `Pss:` lines of an `smaps_rollup` text (zeros for
/// a text without them).
pub fn parse_smaps_rollup(text: &str) -> MemUsage {
    procfs::process::SmapsRollup::from_read(text.as_bytes())
        .map(|r| usage_of(&r))
        .unwrap_or_default()
}

/// Memory of one process from `/proc/PID/smaps_rollup` (Linux 4.14+).
/// Zombies and kernel threads have no address space: the kernel answers
/// `ESRCH` (an error for which [`is_gone`] is true); an empty file gives zeros.
/// Another user's process needs root (`EACCES`).
///
/// procfs and the hand parser it replaced measured the same: 1000
/// processes, release build, three runs, 49-84 ms per pass against 42-81 ms
/// (examples/proc_table_bench.rs).
pub fn smaps_rollup(pid: i32) -> io::Result<MemUsage> {
    let path = proc_path(pid, "smaps_rollup");
    procfs::process::SmapsRollup::from_file(&path)
        .map(|r| usage_of(&r))
        .map_err(|e| from_procfs(e, &path))
}

/// Opens a pidfd (Linux 5.3+) for `pid`: a handle on that very process that
/// stays valid, and never designates another process, after it exits.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // Ours: nix has no pidfd_open.
    // SAFETY: pidfd_open takes a pid and a flags word (0) and returns a new
    // file descriptor or -1; no memory of ours is involved. A descriptor it
    // returns is owned by nobody else: OwnedFd takes sole ownership.
    let fd = unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        (fd >= 0).then(|| OwnedFd::from_raw_fd(fd as i32))
    };
    fd.ok_or_else(|| {
        with_path(
            io::Error::last_os_error(),
            Path::new(&format!("pidfd_open({pid})")),
        )
    })
}

/// Sends `sig` to the process behind `fd` (from [`pidfd_open`]). `ESRCH` if
/// it has exited.
pub fn pidfd_send_signal(fd: &OwnedFd, sig: i32) -> io::Result<()> {
    // Ours: nix has no pidfd_send_signal.
    // SAFETY: the fd is a live pidfd we own; info is NULL (kernel fills a
    // default siginfo) and flags 0, so no memory of ours is read or written.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        let call = format!("pidfd_send_signal(fd {}, {sig})", fd.as_raw_fd());
        return Err(with_path(io::Error::last_os_error(), Path::new(&call)));
    }
    Ok(())
}

/// Sends `sig` to `pid` only if it is ours (real and effective uid equal to
/// our effective uid) and carries `UKLOAD_RUN=run`. Returns whether the signal
/// was sent; `Ok(false)` if the process is gone or is not ours.
///
/// Race-free against PID reuse: the pidfd is opened FIRST, then the marker is
/// checked, then the signal goes through the pidfd. If the PID was recycled
/// between the pidfd and the check, the pidfd designates the exited process
/// and the send fails with `ESRCH` (returned as `Ok(false)`); if the send
/// succeeds, the process was alive throughout, so the checked environment was
/// its own.
pub fn signal_if_marked(pid: i32, run: &str, sig: i32) -> io::Result<bool> {
    match pidfd_if_marked(pid, run)? {
        Some(fd) => send_unless_gone(&fd, sig),
        None => Ok(false),
    }
}

/// A pidfd of `pid`, opened first, if the process is ours and carries
/// `UKLOAD_RUN=run` (checked after the open, see [`signal_if_marked`]);
/// `None` if it is gone or is not.
fn pidfd_if_marked(pid: i32, run: &str) -> io::Result<Option<OwnedFd>> {
    let fd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) if is_gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !owned_by(pid, euid()) {
        return Ok(None);
    }
    match environ_var(pid, ENV_RUN) {
        Ok(Some(r)) if r == run => Ok(Some(fd)),
        Ok(_) => Ok(None),
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sends `sig` through `fd`; `Ok(false)` if its process has exited.
fn send_unless_gone(fd: &OwnedFd, sig: i32) -> io::Result<bool> {
    match pidfd_send_signal(fd, sig) {
        Ok(()) => Ok(true),
        Err(e) if is_gone(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sends `sig` to the process group led by `leader`, only if `leader` is
/// alive, ours (as in [`signal_if_marked`]), still leads group `leader` and
/// carries `UKLOAD_RUN=run`. Returns
/// whether the signal was sent.
///
/// Groups have no pidfd. The leader's pidfd is opened first and the signal
/// goes to the leader through it just before `kill(-pgid)`: if that succeeds
/// the leader was alive, so its PID (and the group id) cannot have been
/// recycled; what remains is the microseconds between the two calls, in which
/// the leader would have to exit, be reaped, its whole group exit and the PID
/// come round again as a new group leader.
pub fn signal_group_if_leader_marked(leader: i32, run: &str, sig: i32) -> io::Result<bool> {
    let Some(fd) = pidfd_if_marked(leader, run)? else {
        return Ok(false);
    };
    match stat(leader) {
        Ok(st) if st.pgid == leader => {}
        Ok(_) => return Ok(false),
        Err(e) if is_gone(&e) => return Ok(false),
        Err(e) => return Err(e),
    }
    if !send_unless_gone(&fd, sig)? {
        return Ok(false);
    }
    match killpg(Pid::from_raw(leader), crate::supervisor::signal(sig)?) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(e) => Err(with_path(
            io::Error::from(e),
            Path::new(&format!("kill(-{leader}, {sig})")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_stat(text: &str) -> Result<ProcStat, ProcError> {
        procfs::process::Stat::from_read(text.as_bytes()).map(ProcStat::from)
    }

    #[test]
    fn stat_parses_comm_with_spaces_and_parens() {
        // Fields 1-22 as in proc(5), then 30 more (vsize .. exit_code).
        let line = format!(
            "4242 (a b) c)) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654{}",
            " 0".repeat(30)
        );
        let st = parse_stat(&line).unwrap();
        assert_eq!(st.pid, 4242);
        assert_eq!(st.comm, "a b) c)");
        assert_eq!(st.state, 'S');
        assert_eq!((st.ppid, st.pgid, st.sid), (1, 4242, 4242));
        assert_eq!(st.start_ticks, 987654);
    }

    #[test]
    fn stat_rejects_truncated_lines() {
        assert!(parse_stat("12 (x) S 1 2").is_err());
        assert!(parse_stat("garbage").is_err());
    }

    #[test]
    fn own_stat_and_cmdline_are_readable() {
        let me = std::process::id() as i32;
        let st = stat(me).unwrap();
        assert_eq!(st.pid, me);
        assert!(list_pids().contains(&me));
        assert!(!cmdline(me).unwrap().is_empty());
        assert!(age(st.start_ticks) < Duration::from_secs(24 * 3600));
    }

    #[test]
    fn smaps_rollup_text_is_parsed() {
        let text =
            "55-7f ---p 0 00:00 0 [rollup]\nRss:  1684 kB\nPss:   247 kB\nPss_Dirty: 112 kB\n";
        assert_eq!(
            parse_smaps_rollup(text),
            MemUsage {
                rss_kb: 1684,
                pss_kb: 247
            }
        );
    }

    #[test]
    fn status_gives_real_and_effective_uid() {
        let text = "Name:\tsleep\nUid:\t65534\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(parse_status_uids(text), Some((65534, 0)));
        assert_eq!(parse_status_uids("Name: x\n"), None);
        let me = std::process::id() as i32;
        assert_eq!(
            uids(me).unwrap(),
            (
                nix::unistd::getuid().as_raw(),
                nix::unistd::geteuid().as_raw()
            )
        );
        assert!(owned_by(me, euid()));
    }

    #[test]
    fn a_missing_process_is_gone_with_its_path_in_the_message() {
        // PID 0 never names a process in /proc.
        for e in [
            stat(0).unwrap_err(),
            uids(0).unwrap_err(),
            smaps_rollup(0).unwrap_err(),
        ] {
            assert!(is_gone(&e), "{e}");
            assert!(e.to_string().contains("/proc/0/"), "{e}");
        }
    }

    #[test]
    fn find_var_matches_whole_names_only() {
        let env = b"UKLOAD_RUNX=no\0UKLOAD_RUN=r1\0A=b=c\0";
        assert_eq!(find_var(env, "UKLOAD_RUN").as_deref(), Some("r1"));
        assert_eq!(find_var(env, "A").as_deref(), Some("b=c"));
        assert_eq!(find_var(env, "B"), None);
    }

    #[test]
    fn descendants_walk_parent_links_breadth_first() {
        let mk = |pid, ppid| ProcStat {
            pid,
            ppid,
            pgid: pid,
            sid: pid,
            tty_nr: 0,
            state: 'S',
            start_ticks: 0,
            comm: "x".into(),
        };
        let t = vec![
            mk(1, 0),
            mk(10, 1),
            mk(11, 10),
            mk(12, 10),
            mk(13, 11),
            mk(20, 1),
        ];
        assert_eq!(descendants(10, &t), vec![10, 11, 12, 13]);
        assert_eq!(descendants(99, &t), Vec::<i32>::new());
    }
}
