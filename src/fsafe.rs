//! Directories and files another user cannot redirect.
//!
//! Why: ukload usually runs as root and writes into places other users may
//! share: a log directory under `/tmp`, a runtime directory. Opening a path
//! with create+truncate follows a symlink someone planted there (`ln -s
//! /etc/shadow /tmp/osvm-load-test/unikernel_0_cid200.log`), and root then
//! truncates the target. The rules here:
//!
//! - a directory ukload writes into ([`ensure_dir`]) is created with a mode
//!   we choose, and an existing one is accepted only if it is a real
//!   directory (not a symlink) owned by us, not writable by group or others
//!   unless sticky; every directory above it must be owned by us or root and
//!   be equally safe, so nobody can rename it away and put a symlink in its
//!   place;
//! - a file ([`open_log`], [`open_lock`]) is opened with `O_NOFOLLOW` (a
//!   symlink as last component fails with `ELOOP`), then checked through the
//!   descriptor (`fstat`): a regular file, owned by us, with one link (a hard
//!   link to someone else's file has two), and only then truncated, through
//!   the descriptor, never through the path.
//!
//! Every refusal is a [`FsafeError`] naming the path, what is wrong and what to
//! do.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Mode of a log file (readable by anyone, as before).
pub const LOG_FILE_MODE: u32 = 0o644;
/// Mode of a lock file (its content, the holder, is public).
pub const LOCK_FILE_MODE: u32 = 0o644;
/// Mode of a private directory (a non-root user's runtime directory).
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of a shared, read-only-to-others directory (root's registry, logs).
pub const SHARED_DIR_MODE: u32 = 0o755;
/// Permission bits that let group or others create, rename or delete entries.
const GROUP_OTHER_WRITE: u32 = 0o022;
/// The sticky bit: only an entry's owner may rename or delete it.
const STICKY: u32 = 0o1000;
/// The root user.
const ROOT_UID: u32 = 0;

/// Why a path was refused or could not be used.
#[derive(Debug)]
pub enum FsafeError {
    /// A system call failed.
    Io {
        /// What was being done (`"create directory"`, `"open"`, ...).
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The path (its last component) is a symbolic link.
    Symlink { path: PathBuf },
    /// Expected a directory, found something else.
    NotDirectory { path: PathBuf },
    /// Expected a regular file, found something else (a FIFO, a device ...).
    NotRegular { path: PathBuf },
    /// Owned by another user.
    WrongOwner {
        path: PathBuf,
        owner: u32,
        /// Who may own it (us; root too for a directory above ours).
        expected: u32,
    },
    /// A directory anyone else may add entries to (group or world writable
    /// without the sticky bit).
    Writable { path: PathBuf, mode: u32 },
    /// A file with more than one hard link: writing it would write another
    /// name too.
    HardLinked { path: PathBuf, nlink: u64 },
}

impl FsafeError {
    /// The path concerned.
    pub fn path(&self) -> &Path {
        match self {
            FsafeError::Io { path, .. }
            | FsafeError::Symlink { path }
            | FsafeError::NotDirectory { path }
            | FsafeError::NotRegular { path }
            | FsafeError::WrongOwner { path, .. }
            | FsafeError::Writable { path, .. }
            | FsafeError::HardLinked { path, .. } => path,
        }
    }

    /// True if this is a safety refusal (not a plain I/O failure).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, FsafeError::Io { .. })
    }
}

impl fmt::Display for FsafeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NOT_FOLLOWED: &str =
            "ukload does not follow links another user could have planted; remove it or choose another directory";
        match self {
            FsafeError::Io { op, path, source } => {
                write!(f, "cannot {op} {}: {source}", path.display())
            }
            FsafeError::Symlink { path } => write!(
                f,
                "refusing {}: it is a symbolic link; {NOT_FOLLOWED}",
                path.display()
            ),
            FsafeError::NotDirectory { path } => write!(
                f,
                "refusing {}: it is not a directory; remove it or choose another directory",
                path.display()
            ),
            FsafeError::NotRegular { path } => write!(
                f,
                "refusing {}: it is not a regular file; remove it or choose another directory",
                path.display()
            ),
            FsafeError::WrongOwner {
                path,
                owner,
                expected,
            } => write!(
                f,
                "refusing {}: it is owned by uid {owner}, not by uid {expected} (the user running ukload); another user could redirect or replace ukload's files there: remove it or choose a directory of your own",
                path.display()
            ),
            FsafeError::Writable { path, mode } => write!(
                f,
                "refusing {}: mode {:04o} lets other users replace its entries (group/world writable without the sticky bit); `chmod go-w` it or choose another directory",
                path.display(),
                mode & 0o7777
            ),
            FsafeError::HardLinked { path, nlink } => write!(
                f,
                "refusing {}: it has {nlink} hard links, so writing it would change another file; remove it or choose another directory",
                path.display()
            ),
        }
    }
}

impl std::error::Error for FsafeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FsafeError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Our effective uid.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FsafeError {
    let path = path.to_path_buf();
    move |source| FsafeError::Io { op, path, source }
}

/// Checks an existing directory `meta` (from `lstat`) at `path`: a directory,
/// owned by `euid` (or by root when `allow_root`), not group/world writable
/// unless sticky.
fn check_dir(path: &Path, meta: &fs::Metadata, allow_root: bool) -> Result<(), FsafeError> {
    if meta.file_type().is_symlink() {
        return Err(FsafeError::Symlink {
            path: path.to_path_buf(),
        });
    }
    if !meta.is_dir() {
        return Err(FsafeError::NotDirectory {
            path: path.to_path_buf(),
        });
    }
    let me = euid();
    let owner = meta.uid();
    if owner != me && !(allow_root && owner == ROOT_UID) {
        return Err(FsafeError::WrongOwner {
            path: path.to_path_buf(),
            owner,
            expected: me,
        });
    }
    let mode = meta.mode();
    if mode & GROUP_OTHER_WRITE != 0 && mode & STICKY == 0 {
        return Err(FsafeError::Writable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Checks the directory at `path` as [`ensure_dir`] would, without
/// creating it: `Ok(false)` if it does not exist, `Ok(true)` if it passes.
pub fn check_existing_dir(path: &Path) -> Result<bool, FsafeError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("lstat", path)(e)),
        Ok(meta) => check_dir(path, &meta, true).map(|()| true),
    }
}

/// `path` made absolute (against the current directory) and lexically
/// normalized (`.` dropped, `..` pops).
fn absolute_normal(path: &Path) -> Result<PathBuf, FsafeError> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(io_err("find the current directory for", path))?
            .join(path)
    };
    Ok(lexical_normal(&absolute))
}

/// `path` with `.` components dropped and each `..` applied lexically (it
/// pops the component before it, without looking at the file system, so a
/// `..` after a symlink does not go where the kernel would; `/..` is `/`,
/// and a `..` at the start of a relative path is dropped).
pub fn lexical_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for comp in path.components() {
        match comp {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Checks `dir` (canonical: no symlinks) and every directory above it, each
/// as a directory above ours (owned by us or root, safe mode).
fn check_canonical_chain(dir: &Path) -> Result<(), FsafeError> {
    let mut chain: Vec<&Path> = dir.ancestors().collect();
    chain.reverse();
    for d in chain {
        let meta = fs::symlink_metadata(d).map_err(io_err("inspect", d))?;
        check_dir(d, &meta, true)?;
    }
    Ok(())
}

/// Creates directory `path` (and missing parents, each with `mode`, exactly:
/// the umask is not applied), or checks the existing one. Refused if `path`
/// is a symlink, not a directory, not owned by our effective uid, or
/// group/world writable without the sticky bit; and if any directory above
/// it is not owned by us or root or is writable by others without the sticky
/// bit (someone could then swap `path` for a symlink). Each directory is
/// checked before anything is created below it. A symlink above `path`
/// (`/var/run -> /run`) is followed and what it resolves to is checked the
/// same way; the symlink itself sits in a directory already checked, so
/// nobody else can change it. The mode of an existing `path` is not changed.
pub fn ensure_dir(path: &Path, mode: u32) -> Result<(), FsafeError> {
    let target = absolute_normal(path)?;
    let names: Vec<&OsStr> = target
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let mut cur = PathBuf::from("/");
    check_canonical_chain(&cur)?;
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        cur.push(name);
        let meta = match fs::symlink_metadata(&cur) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match fs::DirBuilder::new().mode(mode).create(&cur) {
                    Ok(()) => {
                        // The parent is checked, so nobody else can have
                        // replaced what we just created: set the exact mode.
                        fs::set_permissions(&cur, fs::Permissions::from_mode(mode))
                            .map_err(io_err("set the mode of", &cur))?;
                    }
                    // Someone (another ukload) created it meanwhile: check it.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err("create directory", &cur)(e)),
                }
                fs::symlink_metadata(&cur).map_err(io_err("inspect", &cur))?
            }
            Err(e) => return Err(io_err("inspect", &cur)(e)),
        };
        if meta.file_type().is_symlink() && !last {
            let real = fs::canonicalize(&cur).map_err(io_err("resolve", &cur))?;
            check_canonical_chain(&real)?;
            cur = real;
        } else {
            check_dir(&cur, &meta, !last)?;
        }
    }
    Ok(())
}

/// Checks an open file through its descriptor: a regular file owned by our
/// effective uid with exactly one link.
fn check_open_file(file: &File, path: &Path) -> Result<(), FsafeError> {
    let meta = file.metadata().map_err(io_err("fstat", path))?;
    if !meta.is_file() {
        return Err(FsafeError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    let me = euid();
    if meta.uid() != me {
        return Err(FsafeError::WrongOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            expected: me,
        });
    }
    if meta.nlink() != 1 {
        return Err(FsafeError::HardLinked {
            path: path.to_path_buf(),
            nlink: meta.nlink(),
        });
    }
    Ok(())
}

/// Opens `path` with `O_CREAT|O_NOFOLLOW|O_CLOEXEC` plus `read`/`write`,
/// mapping `ELOOP` (a symlink) to [`FsafeError::Symlink`], then checks it
/// through the descriptor.
fn open_checked(path: &Path, read: bool, mode: u32) -> Result<File, FsafeError> {
    let file = OpenOptions::new()
        .read(read)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            // ELOOP is the kernel's answer to O_NOFOLLOW on a symlink; with
            // fs.protected_symlinks it may be EACCES first. Either way, say
            // what is there.
            let is_link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            if e.raw_os_error() == Some(libc::ELOOP) || is_link {
                FsafeError::Symlink {
                    path: path.to_path_buf(),
                }
            } else {
                io_err("open", path)(e)
            }
        })?;
    check_open_file(&file, path)?;
    Ok(file)
}

/// Opens a log file for writing from its start: `O_WRONLY|O_CREAT|O_NOFOLLOW|
/// O_CLOEXEC`, mode 0644; refused unless it is a regular file owned by us
/// with one link; then truncated through the descriptor.
pub fn open_log(path: &Path) -> Result<File, FsafeError> {
    let file = open_checked(path, false, LOG_FILE_MODE)?;
    file.set_len(0).map_err(io_err("truncate", path))?;
    Ok(file)
}

/// Opens (creating) a lock file read-write with the same checks as
/// [`open_log`], without truncating it (its content is the holder line,
/// rewritten through the descriptor by whoever takes the lock).
pub fn open_lock(path: &Path) -> Result<File, FsafeError> {
    open_checked(path, true, LOCK_FILE_MODE)
}

/// Opens an existing file read-only without following a symlink at its last
/// component (for probing someone else's lock or reading a holder line).
/// `NotFound` if it does not exist.
pub fn open_existing_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Mode for a directory of ukload's runtime state: private (0700) for a
/// normal user, 0755 for root's host-wide registry (so anyone's `ukload ps`
/// can read who holds which CID).
pub fn runtime_dir_mode() -> u32 {
    if euid() == ROOT_UID {
        SHARED_DIR_MODE
    } else {
        PRIVATE_DIR_MODE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_path_and_what_to_do() {
        let e = FsafeError::Writable {
            path: PathBuf::from("/x/y"),
            mode: 0o40777,
        };
        let s = e.to_string();
        assert!(
            s.contains("/x/y") && s.contains("0777") && s.contains("chmod"),
            "{s}"
        );
        let e = FsafeError::Symlink {
            path: PathBuf::from("/x/l"),
        };
        assert!(e.to_string().contains("symbolic link"));
    }

    #[test]
    fn lexical_normal_drops_dots_and_applies_dot_dots() {
        let n = |p: &str| lexical_normal(Path::new(p));
        assert_eq!(n("/a/./b/../c/"), PathBuf::from("/a/c"));
        assert_eq!(n("/../x"), PathBuf::from("/x"));
        assert_eq!(n("/a/b/.."), PathBuf::from("/a"));
        assert_eq!(n("a/./b/../../c"), PathBuf::from("c"));
        assert_eq!(n("../a"), PathBuf::from("a"));
        assert_eq!(n("/"), PathBuf::from("/"));
    }

    #[test]
    fn absolute_normal_is_against_the_current_directory() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(absolute_normal(Path::new("x/../y")).unwrap(), cwd.join("y"));
        assert_eq!(
            absolute_normal(Path::new("/p/./q")).unwrap(),
            PathBuf::from("/p/q")
        );
    }
}
