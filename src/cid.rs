//! The host-wide CID registry: one `flock`ed file per vsock CID.
//!
//! Why: guest CIDs are host-global (a second VM given a CID in use fails with
//! "unable to set guest cid: Address already in use"), and the seed system
//! picked them at random (67% collision odds with 15 instances). Picking free
//! CIDs across concurrent ukload processes needs something that is held while
//! a CID is in use and released, by the kernel, when its holder dies however
//! it dies: an exclusive `flock` on `<dir>/cid-<n>.lock`.
//!
//! Rules the code follows:
//! - lock files are never deleted: deleting a flock file races with someone
//!   who just opened it (they would lock an unlinked inode while a third
//!   process creates and locks a new file of the same name);
//! - every lock attempt is non-blocking, so allocation fails fast with a
//!   message that names who holds what;
//! - a lease's file contains its holder as one JSON line, for `ukload ps` and
//!   error messages; the lock, not the content, is the truth.
//!
//! - files are opened with `O_NOFOLLOW` and checked through the descriptor
//!   (regular, ours, one link: [`crate::fsafe::open_lock`]), the directory
//!   with [`crate::fsafe::ensure_dir`], so another user cannot redirect root's
//!   writes with a planted symlink or hard link;
//! - the lock is not the only evidence: a CID that a live process of ours
//!   still carries in `UKLOAD_CID` (for another run of this registry, or a
//!   leftover of a dead harness) is busy even if its lock file is free, so
//!   deleting `cids/` under a live run does not hand its CIDs out again.
//!
//! `flock` locks belong to the open file description, so two opens of the same
//! file in one process conflict like two processes do (threads can test it).

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::exit::{EXIT_IOERR, EXIT_TEMPFAIL, EXIT_USAGE};
use crate::fsafe::{self, FsafeError};
use crate::paths;
use crate::proc;
use crate::runs::{try_flock, unlock, LockMode, TryLock};

/// Lowest CID a guest may get: 0 (hypervisor), 1 (local) and 2 (host) are
/// reserved.
pub const MIN_GUEST_CID: u32 = 3;
/// Highest CID a guest may get: `u32::MAX` is `VMADDR_CID_ANY`.
pub const MAX_GUEST_CID: u32 = u32::MAX - 1;
/// Lock file name: `cid-<n>.lock`.
const LOCK_FILE_PREFIX: &str = "cid-";
const LOCK_FILE_SUFFIX: &str = ".lock";
/// Longest holder line read from a lock file (a real one is ~80 bytes).
const MAX_HOLDER_LINE: u64 = 4096;
/// How many holder groups an `Exhausted` message lists before "and N more".
const MAX_HOLDER_GROUPS_SHOWN: usize = 8;

/// An inclusive range of guest CIDs, e.g. `200-299`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CidRange {
    pub start: u32,
    pub end: u32,
}

/// A `--cid-range` value that is not a valid range: names the value and the
/// rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidRangeError {
    /// The text given.
    pub value: String,
    /// The rule it breaks.
    pub rule: String,
}

impl fmt::Display for CidRangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--cid-range {}: {}", self.value, self.rule)
    }
}

impl std::error::Error for CidRangeError {}

impl CidRange {
    /// A validated range: `3 <= start <= end <= u32::MAX - 1`.
    pub fn new(start: u32, end: u32) -> Result<CidRange, CidRangeError> {
        let value = if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        };
        Self::validate(start, end, &value)
    }

    fn validate(start: u32, end: u32, value: &str) -> Result<CidRange, CidRangeError> {
        let err = |rule: String| CidRangeError {
            value: value.to_string(),
            rule,
        };
        if start > end {
            return Err(err("start is greater than end".into()));
        }
        if start < MIN_GUEST_CID {
            return Err(err(format!(
                "CIDs 0, 1 and 2 are reserved (hypervisor, local, host): start must be at least {MIN_GUEST_CID}"
            )));
        }
        if end > MAX_GUEST_CID {
            return Err(err(format!(
                "CID {} is reserved (VMADDR_CID_ANY): end must be at most {MAX_GUEST_CID}",
                u32::MAX
            )));
        }
        Ok(CidRange { start, end })
    }

    /// Number of CIDs in the range (never 0).
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize + 1
    }

    /// Always false: a valid range holds at least one CID.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, cid: u32) -> bool {
        (self.start..=self.end).contains(&cid)
    }

    /// The CIDs, in increasing order.
    pub fn iter(&self) -> std::ops::RangeInclusive<u32> {
        self.start..=self.end
    }
}

impl fmt::Display for CidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl FromStr for CidRange {
    type Err = CidRangeError;

    /// Parses `START-END` or a single `CID`.
    fn from_str(s: &str) -> Result<CidRange, CidRangeError> {
        let value = s.trim();
        let err = |rule: String| CidRangeError {
            value: s.to_string(),
            rule,
        };
        let num = |part: &str, what: &str| -> Result<u32, CidRangeError> {
            part.trim().parse::<u32>().map_err(|_| {
                err(format!(
                    "{what} {:?} is not a CID (a whole number from {MIN_GUEST_CID} to {MAX_GUEST_CID}); expected START-END, e.g. 200-299, or a single CID",
                    part.trim()
                ))
            })
        };
        let (start, end) = match value.split_once('-') {
            Some((a, b)) => (num(a, "start")?, num(b, "end")?),
            None => {
                let c = num(value, "value")?;
                (c, c)
            }
        };
        Self::validate(start, end, s)
    }
}

/// Who holds a CID; written as one JSON line into its lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderInfo {
    /// Process holding the lock (the harness).
    pub pid: u32,
    pub run_id: String,
    /// Instance index within the run, once assigned.
    pub instance: Option<u32>,
}

/// Errors of the CID registry.
#[derive(Debug)]
pub enum CidError {
    /// A range that breaks the rules.
    Range(CidRangeError),
    /// A registry directory or file was refused: a symlink, another user's,
    /// writable by others, hard-linked (see [`crate::fsafe`]).
    Unsafe(FsafeError),
    /// A system call on a registry file failed (`EROFS`, `EMFILE`, `EACCES`
    /// ...): not a full range.
    Io {
        /// What was being done (`"open"`, `"flock"`, `"write holder"` ...).
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// Fewer than `wanted` CIDs of `range` are free.
    Exhausted {
        range: CidRange,
        wanted: usize,
        /// How many were free when we looked.
        free: usize,
        /// Every busy CID of the range, with its holder if its file says.
        holders: Vec<(u32, Option<HolderInfo>)>,
    },
}

impl fmt::Display for CidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CidError::Range(e) => e.fmt(f),
            CidError::Unsafe(e) => write!(f, "CID registry: {e}"),
            CidError::Io { op, path, source } => {
                write!(f, "CID registry: {op} {}: {source}", path.display())
            }
            CidError::Exhausted {
                range,
                wanted,
                free,
                holders,
            } => {
                write!(
                    f,
                    "CID range {range} exhausted: cannot allocate {wanted} CID(s), only {free} of {} free",
                    range.len()
                )?;
                let summary = summarize_holders(holders);
                if !summary.is_empty() {
                    write!(f, "; {summary}")?;
                }
                write!(
                    f,
                    ". Free some with `ukload cleanup`, or choose another range with --cid-range"
                )
            }
        }
    }
}

impl std::error::Error for CidError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CidError::Range(e) => Some(e),
            CidError::Unsafe(e) => Some(e),
            CidError::Io { source, .. } => Some(source),
            CidError::Exhausted { .. } => None,
        }
    }
}

impl CidError {
    /// The process exit code this error calls for: [`EXIT_TEMPFAIL`] (75)
    /// when the range has no room now (try later or elsewhere),
    /// [`EXIT_IOERR`] (74) when the registry could not be used at all (a
    /// read-only or unsafe directory, out of descriptors, no permission),
    /// [`EXIT_USAGE`] (64) for an invalid range.
    pub fn exit_code(&self) -> i32 {
        match self {
            CidError::Exhausted { .. } => EXIT_TEMPFAIL,
            CidError::Range(_) => EXIT_USAGE,
            CidError::Unsafe(_) | CidError::Io { .. } => EXIT_IOERR,
        }
    }

    /// True if the range is full (as opposed to the registry being unusable).
    pub fn is_exhausted(&self) -> bool {
        matches!(self, CidError::Exhausted { .. })
    }
}

impl From<FsafeError> for CidError {
    fn from(e: FsafeError) -> Self {
        match e {
            FsafeError::Io { op, path, source } => CidError::Io { op, path, source },
            refused => CidError::Unsafe(refused),
        }
    }
}

impl From<CidRangeError> for CidError {
    fn from(e: CidRangeError) -> Self {
        CidError::Range(e)
    }
}

/// "run r1 pid 123 holds 200-224, run r2 pid 9 holds 225, 230-231, unknown
/// holder holds 240": consecutive CIDs of one holder are merged into spans.
fn summarize_holders(holders: &[(u32, Option<HolderInfo>)]) -> String {
    let mut sorted: Vec<&(u32, Option<HolderInfo>)> = holders.iter().collect();
    sorted.sort_by_key(|(cid, _)| *cid);
    // (holder key: run id and pid, spans of CIDs) in order of first appearance.
    type Key<'a> = Option<(&'a str, u32)>;
    let mut groups: Vec<(Key, Vec<(u32, u32)>)> = Vec::new();
    let mut prev: Option<(u32, Key)> = None;
    for (cid, info) in sorted {
        let key = info.as_ref().map(|h| (h.run_id.as_str(), h.pid));
        let idx = match groups.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                groups.push((key, Vec::new()));
                groups.len() - 1
            }
        };
        let spans = &mut groups[idx].1;
        match (prev, spans.last_mut()) {
            (Some((p, pk)), Some(last)) if pk == key && p.checked_add(1) == Some(*cid) => {
                last.1 = *cid
            }
            _ => spans.push((*cid, *cid)),
        }
        prev = Some((*cid, key));
    }
    let mut parts: Vec<String> = groups
        .iter()
        .take(MAX_HOLDER_GROUPS_SHOWN)
        .map(|(key, spans)| {
            let spans: Vec<String> = spans
                .iter()
                .map(|&(a, b)| CidRange { start: a, end: b }.to_string())
                .collect();
            match key {
                Some((run, pid)) => format!("run {run} pid {pid} holds {}", spans.join(", ")),
                None => format!("unknown holder holds {}", spans.join(", ")),
            }
        })
        .collect();
    if groups.len() > MAX_HOLDER_GROUPS_SHOWN {
        parts.push(format!(
            "and {} more holders",
            groups.len() - MAX_HOLDER_GROUPS_SHOWN
        ));
    }
    parts.join(", ")
}

/// A CID held by this process until the lease is dropped (closing the file
/// releases the lock; the file itself stays).
#[derive(Debug)]
pub struct CidLease {
    pub cid: u32,
    /// The open lock file; its open file description owns the lock.
    pub file: File,
    holder: HolderInfo,
    path: PathBuf,
}

impl CidLease {
    /// Records the instance index in the holder line, for `ukload ps` and
    /// other runs' error messages.
    pub fn set_instance(&mut self, instance: u32) -> Result<(), CidError> {
        self.holder.instance = Some(instance);
        write_holder(&self.file, &self.holder, &self.path)
    }

    pub fn holder(&self) -> &HolderInfo {
        &self.holder
    }

    /// Is the lock file we hold still the one the registry path names
    /// (`fstat` of our descriptor against `lstat` of the path)? False if it
    /// was deleted or replaced (`rm -r cids/`).
    pub fn is_current(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self.file.metadata(), std::fs::symlink_metadata(&self.path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    /// Re-establishes the lease if its lock file vanished or was replaced:
    /// re-creates the directory and the file (with the same checks as
    /// [`CidRegistry::allocate`]), locks it and writes the holder line.
    /// Returns whether anything had to be done. If another process locked
    /// the new file first, the CID is no longer exclusively ours: an
    /// [`CidError::Io`] with `AddrInUse` names the file. Cheap (two stats)
    /// when nothing changed, so a harness can call it periodically.
    pub fn ensure_current(&mut self) -> Result<bool, CidError> {
        if self.is_current() {
            return Ok(false);
        }
        if let Some(dir) = self.path.parent() {
            fsafe::ensure_dir(dir, fsafe::runtime_dir_mode())?;
        }
        let file = fsafe::open_lock(&self.path)?;
        match try_flock(&file, LockMode::Exclusive) {
            Ok(TryLock::Locked) => {}
            Ok(TryLock::WouldBlock) => {
                return Err(CidError::Io {
                    op: "re-lock (another process took it after the file vanished)",
                    path: self.path.clone(),
                    source: io::Error::from(io::ErrorKind::AddrInUse),
                })
            }
            Err(source) => {
                return Err(CidError::Io {
                    op: "flock",
                    path: self.path.clone(),
                    source,
                })
            }
        }
        write_holder(&file, &self.holder, &self.path)?;
        // The old descriptor (and its lock on the unlinked inode) goes.
        self.file = file;
        Ok(true)
    }

    /// Path of the lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn write_holder(file: &File, holder: &HolderInfo, path: &Path) -> Result<(), CidError> {
    let io_err = |op, source| CidError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let mut line = serde_json::to_string(holder)
        .map_err(|e| io_err("serialize holder for", io::Error::other(e)))?;
    line.push('\n');
    file.set_len(0).map_err(|e| io_err("truncate", e))?;
    file.write_all_at(line.as_bytes(), 0)
        .map_err(|e| io_err("write holder to", e))
}

/// Every live process of ours carrying `UKLOAD_CID` within `range` whose
/// harness is dead (a leftover, e.g. a daemonized VMM outliving a killed
/// harness), as a holder (its pid, run and instance), sorted by CID.
pub fn cid_users(range: CidRange) -> Vec<(u32, HolderInfo)> {
    let runs_dir = paths::runs_dir();
    let mut users: Vec<(u32, HolderInfo)> = carriers(range)
        .into_iter()
        .filter(|m| !crate::runs::marked_run_alive(&runs_dir, m))
        .filter_map(as_holder)
        .collect();
    users.sort_by_key(|(c, h)| (*c, h.pid));
    users
}

/// Live (non-zombie) processes of ours carrying a `UKLOAD_CID` in `range`.
fn carriers(range: CidRange) -> Vec<proc::Marked> {
    proc::scan_marked(None)
        .into_iter()
        .filter(|m| !m.stat.is_zombie())
        .filter(|m| m.cid.is_some_and(|c| range.contains(c)))
        .collect()
}

fn as_holder(m: proc::Marked) -> Option<(u32, HolderInfo)> {
    Some((
        m.cid?,
        HolderInfo {
            pid: m.pid as u32,
            run_id: m.run,
            instance: m.instance,
        },
    ))
}

/// Same directory? Compared resolved when both resolve, else as given.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The registry: a directory of `cid-<n>.lock` files shared by every ukload
/// process on the host.
#[derive(Debug, Clone)]
pub struct CidRegistry {
    dir: PathBuf,
    /// Also treat as busy a CID whose lock is free but which a live process
    /// of another run still carries in `UKLOAD_CID` (see
    /// [`CidRegistry::check_leftover_users`]).
    check_leftover_users: bool,
}

impl CidRegistry {
    /// Opens the registry directory `dir`, creating it (and missing parents)
    /// with [`fsafe::runtime_dir_mode`] (0700, or 0755 for root). Refused
    /// ([`CidError::Unsafe`]) if it or a directory above it is a symlink we
    /// did not expect, another user's, or writable by others without the
    /// sticky bit.
    pub fn open(dir: &Path) -> Result<CidRegistry, CidError> {
        fsafe::ensure_dir(dir, fsafe::runtime_dir_mode())?;
        Ok(CidRegistry {
            dir: dir.to_path_buf(),
            check_leftover_users: true,
        })
    }

    /// Whether [`allocate`](Self::allocate) skips CIDs still carried by live
    /// processes of ours of other runs (on by default): a leftover of a dead
    /// harness (any registry), or a process of a live run of THIS registry.
    ///
    /// Why: the lock dies with the harness, but a daemonized VMM of a killed
    /// harness may live on with its CID; with kernel vhost-vsock, a new guest
    /// given that CID would fail with "Address already in use". And a lock
    /// file can be deleted (`rm -r cids/`) under a live run: the next run
    /// would lock a new file of the same name. Costs one scan of the process
    /// table per allocation. Turn it off where unrelated
    /// processes on the host may carry `UKLOAD_CID` (tests of a temporary
    /// registry).
    pub fn check_leftover_users(mut self, on: bool) -> CidRegistry {
        self.check_leftover_users = on;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the lock file of `cid`.
    pub fn lock_path(&self, cid: u32) -> PathBuf {
        self.dir
            .join(format!("{LOCK_FILE_PREFIX}{cid}{LOCK_FILE_SUFFIX}"))
    }

    /// Tries to take `cid` without blocking: `Some(file)` holding the lock, or
    /// `None` if someone holds it.
    fn try_take(&self, cid: u32) -> Result<Option<File>, CidError> {
        let path = self.lock_path(cid);
        let file = fsafe::open_lock(&path)?;
        match try_flock(&file, LockMode::Exclusive) {
            Ok(TryLock::Locked) => Ok(Some(file)),
            Ok(TryLock::WouldBlock) => Ok(None),
            Err(source) => Err(CidError::Io {
                op: "flock",
                path,
                source,
            }),
        }
    }

    /// Takes `count` free CIDs of `range`, lowest first, all or nothing, never
    /// blocking. Each lease's file records `holder`; give each its instance
    /// index with [`CidLease::set_instance`]. The leases come sorted by CID.
    ///
    /// If fewer than `count` are free, everything taken is released and
    /// [`CidError::Exhausted`] says who holds the rest.
    pub fn allocate(
        &self,
        range: CidRange,
        count: usize,
        holder: &HolderInfo,
    ) -> Result<Vec<CidLease>, CidError> {
        let mut leases: Vec<CidLease> = Vec::with_capacity(count);
        let mut busy: Vec<u32> = Vec::new();
        let leftovers: HashMap<u32, HolderInfo> = if self.check_leftover_users {
            self.unlocked_users(range, &holder.run_id)
        } else {
            HashMap::new()
        };
        let take = |cid: u32, leases: &mut Vec<CidLease>| -> Result<bool, CidError> {
            let Some(file) = self.try_take(cid)? else {
                return Ok(false);
            };
            if leftovers.contains_key(&cid) {
                // Unlocked, but a leftover process still uses it: not free.
                return Ok(false);
            }
            let path = self.lock_path(cid);
            write_holder(&file, holder, &path)?;
            leases.push(CidLease {
                cid,
                file,
                holder: holder.clone(),
                path,
            });
            Ok(true)
        };
        for cid in range.iter() {
            if leases.len() == count {
                break;
            }
            if !take(cid, &mut leases)? {
                busy.push(cid);
            }
        }
        // A concurrent `holders()` probe holds a shared lock for a few
        // microseconds; give each busy CID one more immediate try before
        // declaring the range exhausted.
        if leases.len() < count {
            let mut still_busy = Vec::new();
            for cid in busy {
                if leases.len() < count && take(cid, &mut leases)? {
                    continue;
                }
                still_busy.push(cid);
            }
            busy = still_busy;
        }
        if leases.len() < count {
            let free = leases.len();
            drop(leases);
            // Prefer the lock file's holder (the harness); a CID whose lock is
            // free is busy because of a leftover process: name that one.
            let holders = busy
                .into_iter()
                .map(|c| {
                    let h = match leftovers.get(&c) {
                        Some(h) if !self.is_held(c).unwrap_or(true) => Some(h.clone()),
                        _ => self.read_holder(c),
                    };
                    (c, h)
                })
                .collect();
            return Err(CidError::Exhausted {
                range,
                wanted: count,
                free,
                holders,
            });
        }
        leases.sort_by_key(|l| l.cid);
        Ok(leases)
    }

    /// CIDs of `range` that live processes of ours of runs other than
    /// `our_run` still carry, which the lock files may not show: processes
    /// of a dead harness (leftovers, from any registry) and processes of a
    /// live run that uses this registry (its lock file may have been
    /// deleted). Processes of live runs of other registries are theirs to
    /// coordinate (a normal user's registry is per user).
    fn unlocked_users(&self, range: CidRange, our_run: &str) -> HashMap<u32, HolderInfo> {
        let runs_dir = paths::runs_dir();
        let mut out = HashMap::new();
        for m in carriers(range) {
            if m.run == our_run {
                continue;
            }
            let this_registry = match proc::environ_var(m.pid, paths::ENV_RUNTIME_DIR) {
                Ok(Some(d)) if !d.is_empty() => same_dir(&Path::new(&d).join("cids"), &self.dir),
                _ => false,
            };
            if this_registry || !crate::runs::marked_run_alive(&runs_dir, &m) {
                if let Some((cid, h)) = as_holder(m) {
                    out.entry(cid).or_insert(h);
                }
            }
        }
        out
    }

    /// The holder line of `cid`'s file, if readable and well-formed (a holder
    /// that is writing it at this instant may leave it empty). A symlink is
    /// not followed.
    fn read_holder(&self, cid: u32) -> Option<HolderInfo> {
        let mut text = String::new();
        fsafe::open_existing_nofollow(&self.lock_path(cid))
            .ok()?
            .take(MAX_HOLDER_LINE)
            .read_to_string(&mut text)
            .ok()?;
        serde_json::from_str(text.lines().next()?).ok()
    }

    /// Is `cid` held by someone (including another lease of this process)?
    /// Probes with a non-blocking shared lock, released at once; a missing
    /// file means free.
    pub fn is_held(&self, cid: u32) -> Result<bool, CidError> {
        let path = self.lock_path(cid);
        let file = match fsafe::open_existing_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(CidError::Io {
                    op: "open",
                    path,
                    source,
                })
            }
        };
        match try_flock(&file, LockMode::Shared) {
            Ok(TryLock::WouldBlock) => Ok(true),
            Ok(TryLock::Locked) => {
                // Closing the file right after releases it too; unlock
                // explicitly to keep the window as short as possible.
                let _ = unlock(&file);
                Ok(false)
            }
            Err(source) => Err(CidError::Io {
                op: "flock",
                path,
                source,
            }),
        }
    }

    /// CIDs of `range` held by someone, with the holder their file names.
    /// Held CIDs whose holder line is unreadable are left out. Only existing
    /// lock files are probed, so a huge range costs no more than a small one.
    pub fn holders(&self, range: CidRange) -> Vec<(u32, HolderInfo)> {
        let mut cids: Vec<u32> = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(|e| {
                    let name = e.ok()?.file_name();
                    let name = name.to_str()?;
                    name.strip_prefix(LOCK_FILE_PREFIX)?
                        .strip_suffix(LOCK_FILE_SUFFIX)?
                        .parse::<u32>()
                        .ok()
                })
                .filter(|c| range.contains(*c))
                .collect(),
            Err(_) => return Vec::new(),
        };
        cids.sort_unstable();
        cids.into_iter()
            .filter(|&c| self.is_held(c).unwrap_or(false))
            .filter_map(|c| Some((c, self.read_holder(c)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(run: &str, pid: u32) -> Option<HolderInfo> {
        Some(HolderInfo {
            pid,
            run_id: run.into(),
            instance: None,
        })
    }

    #[test]
    fn holder_summary_merges_consecutive_cids() {
        let hs = vec![
            (201, holder("r1", 1)),
            (200, holder("r1", 1)),
            (202, holder("r2", 2)),
            (203, holder("r1", 1)),
            (205, None),
        ];
        assert_eq!(
            summarize_holders(&hs),
            "run r1 pid 1 holds 200-201, 203, run r2 pid 2 holds 202, unknown holder holds 205"
        );
    }

    #[test]
    fn range_display_round_trips() {
        for s in ["200-299", "250", "3-4294967294"] {
            assert_eq!(s.parse::<CidRange>().unwrap().to_string(), s);
        }
    }
}
