//! The runs on this host: run ids, run directories and their harness locks,
//! and whether a run is alive. One place for the run state that `run`
//! (creating it), `cid` (another run's CIDs) and `ps`/`cleanup` (leftovers)
//! share.
//!
//! A run is alive while its harness holds the `flock` on
//! `<runs_dir>/<run id>/harness.lock` (the kernel drops it when the harness
//! dies, however it dies), OR while the process its run id names is alive:
//! run ids are `<hex ms>-<harness pid>` ([`new_run_id`]), so a live `ukload`
//! with that pid which started no later than the id's time is the harness,
//! even if someone deleted `runs/<id>`.

use std::fmt;
use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::paths;
use crate::proc::{self, Marked};

/// Why the run directory could not be made ours.
#[derive(Debug)]
pub enum RunDirError {
    /// Creating or checking a directory or the lock file was refused.
    Unsafe(crate::fsafe::FsafeError),
    /// The harness lock could not be taken.
    Lock { path: PathBuf, error: io::Error },
    /// A concurrent cleanup kept removing it.
    Vanishing(PathBuf),
}

impl fmt::Display for RunDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunDirError::Unsafe(e) => write!(f, "run directory: {e}"),
            RunDirError::Lock { path, error } => {
                write!(f, "cannot lock {}: {error}", path.display())
            }
            RunDirError::Vanishing(dir) => write!(
                f,
                "run directory {} kept disappearing (is a `ukload cleanup` loop running?)",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for RunDirError {}

/// A new run id: short (it ends up in socket paths) and unique per host:
/// the low [`RUN_ID_MS_BITS`] bits of the epoch milliseconds, in hex, and
/// the harness pid.
pub fn new_run_id() -> String {
    let low = now_ms() & ((1u64 << RUN_ID_MS_BITS) - 1);
    format!("{low:x}-{}", std::process::id())
}

/// The harness pid a run id names (`<anything>-<pid>`), without checking
/// the rest of the id (see [`parse_run_id`] for the full form).
pub fn harness_pid_of(run_id: &str) -> Option<i32> {
    run_id.rsplit_once('-')?.1.parse().ok()
}

/// How many times creating the run directory is retried when a concurrent
/// `ukload cleanup` removed it between creation and locking.
const RUN_DIR_ATTEMPTS: u32 = 3;

/// The run directory: `runs/<id>/`, with `harness.lock` held for our life.
///
/// `ukload cleanup` removes run directories whose lock it can take; between
/// our `create` and our `flock` it could take it, so after locking we check
/// that the path still names the file we locked, and start over if not. The
/// runs directory and ours are created and checked with
/// [`crate::fsafe::ensure_dir`] and the lock opened without following links
/// ([`crate::fsafe::open_lock`]): refused if another user could redirect them.
pub fn make_run_dir(run_id: &str) -> Result<(PathBuf, File), RunDirError> {
    use std::os::unix::fs::MetadataExt;
    let setup = RunDirError::Unsafe;
    let runs = paths::runs_dir();
    paths::ensure_runtime_subdir(&runs).map_err(setup)?;
    let dir = runs.join(run_id);
    let lock_path = dir.join(paths::HARNESS_LOCK);
    for _ in 0..RUN_DIR_ATTEMPTS {
        paths::ensure_runtime_subdir(&dir).map_err(setup)?;
        let lock = crate::fsafe::open_lock(&lock_path).map_err(setup)?;
        // std's try_lock: flock(LOCK_EX | LOCK_NB).
        if let Err(e) = lock.try_lock() {
            return Err(RunDirError::Lock {
                path: lock_path,
                error: io::Error::from(e),
            });
        }
        let same = match (lock.metadata(), std::fs::symlink_metadata(&lock_path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if same {
            return Ok((dir, lock));
        }
    }
    Err(RunDirError::Vanishing(dir))
}

/// Name of the runs directory inside a runtime directory (the layout of
/// [`paths::runs_dir`]).
const RUNS_SUBDIR: &str = "runs";

/// True if `run_id` can name a directory under the runs directory: one path
/// component, not hidden (a harness may prepare its directory under a dot
/// name and rename it into place).
pub(crate) fn valid_run_id(run_id: &str) -> bool {
    !run_id.is_empty() && !run_id.starts_with('.') && !run_id.contains('/')
}

/// Liveness of the harness of `m`'s run. If the process carries
/// `UKLOAD_RUNTIME_DIR` (its harness used another runtime directory, e.g.
/// another user's `XDG_RUNTIME_DIR`), the lock is looked up there, so that a
/// run we cannot see in `runs_dir` is never taken for dead by mistake.
pub fn marked_run_alive(runs_dir: &Path, m: &Marked) -> bool {
    match proc::environ_var(m.pid, paths::ENV_RUNTIME_DIR) {
        Ok(Some(dir)) if !dir.is_empty() => {
            harness_alive_in(&Path::new(&dir).join(RUNS_SUBDIR), &m.run)
        }
        _ => harness_alive_in(runs_dir, &m.run),
    }
}

/// Opens `<runs_dir>/<run_id>/harness.lock` without creating it or
/// following a symlink.
pub(crate) fn open_harness_lock(runs_dir: &Path, run_id: &str) -> io::Result<File> {
    crate::fsafe::open_existing_nofollow(&runs_dir.join(run_id).join(paths::HARNESS_LOCK))
}

/// Name of ukload's executable, which a live harness runs.
const HARNESS_EXE_NAME: &str = "ukload";
/// Suffix the kernel adds to `/proc/PID/exe` when the binary was replaced
/// (rebuilt) while running.
const DELETED_SUFFIX: &str = " (deleted)";
/// How much later than its run id's time a harness may appear to have
/// started: `btime` has whole-second resolution and clocks get adjusted.
pub const HARNESS_START_TOLERANCE: Duration = Duration::from_secs(5);
/// Run ids keep the low 40 bits of the epoch milliseconds (see
/// [`new_run_id`]).
const RUN_ID_MS_BITS: u32 = 40;

/// The (milliseconds since the epoch, harness pid) a run id of the form
/// `<hex ms>-<pid>` encodes; `None` for other ids. The id keeps only the low
/// [`RUN_ID_MS_BITS`] bits of the time: the full value is the latest time
/// with those bits not after `now_ms` (plus the tolerance).
pub fn parse_run_id(run_id: &str, now_ms: u64) -> Option<(u64, i32)> {
    let (hex, pid) = run_id.split_once('-')?;
    if hex.is_empty() || hex.len() > 10 || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let low = u64::from_str_radix(hex, 16).ok()?;
    let pid: i32 = pid.parse().ok().filter(|p| *p > 0)?;
    let modulus = 1u64 << RUN_ID_MS_BITS;
    if low >= modulus {
        return None;
    }
    let horizon = now_ms + HARNESS_START_TOLERANCE.as_millis() as u64;
    let base = horizon - horizon % modulus;
    let full = if base + low <= horizon {
        base + low
    } else {
        base.checked_sub(modulus)? + low
    };
    Some((full, pid))
}

/// Boot time, milliseconds since the epoch (`btime` of `/proc/stat`,
/// through procfs, which reads it once per thread).
fn boot_time_ms() -> Option<u64> {
    procfs::boot_time_secs().ok().map(|secs| secs * 1000)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Is the harness that run id `run_id` names still running? True if the pid
/// it names exists, runs the `ukload` executable, and started no later than
/// the id's time (plus [`HARNESS_START_TOLERANCE`]): a process that took the
/// pid over after the harness died started later. False for ids not of the
/// `<hex ms>-<pid>` form.
pub fn harness_pid_alive(run_id: &str) -> bool {
    let Some((id_ms, pid)) = parse_run_id(run_id, now_ms()) else {
        return false;
    };
    let Ok(st) = proc::stat(pid) else {
        return false;
    };
    if st.is_zombie() {
        return false;
    }
    let runs_ukload = match fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(exe) => {
            let name = exe
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.strip_suffix(DELETED_SUFFIX).unwrap_or(&name) == HARNESS_EXE_NAME
        }
        // Not ours to inspect (another user's process): its command name.
        Err(_) => st.comm == HARNESS_EXE_NAME,
    };
    if !runs_ukload {
        return false;
    }
    let Some(boot_ms) = boot_time_ms() else {
        // Cannot place its start in time: the pid and the executable match.
        return true;
    };
    let started_ms = boot_ms + st.start_ticks * 1000 / proc::clock_ticks_per_sec();
    started_ms <= id_ms + HARNESS_START_TOLERANCE.as_millis() as u64
}

/// Is the harness of `run_id` (under `runs_dir`) alive: holding its
/// `harness.lock`, or (if the lock says dead or is missing, e.g. deleted)
/// still running as the pid its id names ([`harness_pid_alive`])? Probing
/// takes a shared lock (so probes do not conflict with each other) and
/// releases it at once.
pub fn harness_alive_in(runs_dir: &Path, run_id: &str) -> bool {
    if !valid_run_id(run_id) {
        return false;
    }
    harness_lock_held(runs_dir, run_id) || harness_pid_alive(run_id)
}

/// Is `<runs_dir>/<run_id>/harness.lock` held? Missing or lockable: no.
fn harness_lock_held(runs_dir: &Path, run_id: &str) -> bool {
    let file = match open_harness_lock(runs_dir, run_id) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
        // Cannot tell (permissions): assume alive, so nothing is killed on a guess.
        Err(_) => return true,
    };
    match try_flock(&file, LockMode::Shared) {
        Ok(TryLock::Locked) => {
            let _ = unlock(&file);
            false
        }
        Ok(TryLock::WouldBlock) => true,
        Err(_) => true,
    }
}

/// Outcome of a non-blocking `flock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryLock {
    Locked,
    WouldBlock,
}

/// Which `flock` to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// `LOCK_SH`: many holders.
    Shared,
    /// `LOCK_EX`: one holder.
    Exclusive,
}

/// A non-blocking `flock` (std's `File::try_lock*`, which is `flock` with
/// `LOCK_NB` on Linux), retried on `EINTR`; never blocks.
pub fn try_flock(file: &File, mode: LockMode) -> io::Result<TryLock> {
    loop {
        let r = match mode {
            LockMode::Shared => file.try_lock_shared(),
            LockMode::Exclusive => file.try_lock(),
        };
        match r {
            Ok(()) => return Ok(TryLock::Locked),
            Err(TryLockError::WouldBlock) => return Ok(TryLock::WouldBlock),
            Err(TryLockError::Error(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// Releases a lock taken with [`try_flock`] (closing the file would too).
pub fn unlock(file: &File) -> io::Result<()> {
    file.unlock()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_give_back_their_time_and_pid() {
        let now: u64 = 1_750_000_000_000;
        let id = format!("{:x}-{}", (now - 3000) & 0xff_ffff_ffff, 4242);
        assert_eq!(parse_run_id(&id, now), Some((now - 3000, 4242)));
        // Within the tolerance after now: still this epoch window.
        let id = format!("{:x}-7", (now + 1000) & 0xff_ffff_ffff);
        assert_eq!(parse_run_id(&id, now), Some((now + 1000, 7)));
        for bad in [
            "deadrun12",
            "test-a-1-2",
            "zz-12",
            "1a-",
            "-12",
            "1a-0",
            "1a-x",
        ] {
            assert_eq!(parse_run_id(bad, now), None, "{bad}");
        }
    }

    #[test]
    fn our_own_pid_is_a_live_harness_only_under_the_ukload_name() {
        // The test binary is not `ukload`: never taken for a harness.
        let id = format!("{:x}-{}", now_ms() & 0xff_ffff_ffff, std::process::id());
        assert!(!harness_pid_alive(&id));
    }

    #[test]
    fn run_ids_are_single_path_components() {
        assert!(valid_run_id("r-20240101-1"));
        for bad in ["", ".", "..", "a/b", "../x", ".r1.tmp"] {
            assert!(!valid_run_id(bad));
        }
    }
}
