//! Where ukload keeps host-wide state.
//!
//! Root has ONE registry per host, `/run/ukload`, whatever `XDG_RUNTIME_DIR`
//! says: a login shell (which has `XDG_RUNTIME_DIR`) and a cron job (which has
//! not) must see each other's CIDs, or they hand out the same ones. A normal
//! user's registry is per user, `$XDG_RUNTIME_DIR/ukload` (a user cannot lock
//! files in root's 0755 directory anyway), so CIDs are coordinated between
//! that user's runs only; give different users disjoint `--cid-range`s.
//! `UKLOAD_RUNTIME_DIR` overrides both (tests use it for isolation).
//!
//! The directories are created and checked with [`crate::fsafe::ensure_dir`]:
//! 0700 for a normal user, 0755 for root, and refused when owned by another
//! user or writable by others without the sticky bit.

use std::path::PathBuf;

use crate::fsafe;

/// Overrides the runtime directory (CID registry, run directories).
pub const ENV_RUNTIME_DIR: &str = "UKLOAD_RUNTIME_DIR";

/// Root's host-wide runtime directory.
pub const ROOT_RUNTIME_DIR: &str = "/run/ukload";

/// Runtime directory: `$UKLOAD_RUNTIME_DIR` if set; else for root the fixed
/// [`ROOT_RUNTIME_DIR`] (one registry per host); else, per user,
/// `$XDG_RUNTIME_DIR/ukload`, else `/run/user/<uid>/ukload` if that user
/// runtime directory exists (what `XDG_RUNTIME_DIR` normally names, so a cron
/// job finds the same registry as a login shell), else `/tmp/ukload-<uid>`.
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(ENV_RUNTIME_DIR).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let uid = fsafe::euid();
    if uid == 0 {
        return PathBuf::from(ROOT_RUNTIME_DIR);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("ukload");
    }
    let user_run = PathBuf::from(format!("/run/user/{uid}"));
    if user_run.is_dir() {
        return user_run.join("ukload");
    }
    PathBuf::from(format!("/tmp/ukload-{uid}"))
}

/// Directory of the CID lock files.
pub fn cid_dir() -> PathBuf {
    runtime_dir().join("cids")
}

/// Directory holding one sub-directory per run (`runs/<run id>/`), each with
/// `harness.lock` held (flock) by the live harness and the instances' sockets.
pub fn runs_dir() -> PathBuf {
    runtime_dir().join("runs")
}

/// Creates (or checks) `dir` as a runtime directory of ours: mode
/// [`fsafe::runtime_dir_mode`], refused if another user could redirect it.
pub fn ensure_runtime_subdir(dir: &std::path::Path) -> Result<(), fsafe::FsafeError> {
    fsafe::ensure_dir(dir, fsafe::runtime_dir_mode())
}

/// Default directory of the per-instance logs (the seed's contract).
pub const DEFAULT_LOG_DIR: &str = "/tmp/osvm-load-test";

/// Where logs go when [`DEFAULT_LOG_DIR`] is refused (another user created
/// it first, or made it writable to others): `/tmp/osvm-load-test-<uid>`.
pub fn fallback_log_dir() -> PathBuf {
    PathBuf::from(format!("{DEFAULT_LOG_DIR}-{}", fsafe::euid()))
}

/// Mode of a log directory ukload creates (logs stay readable, as before).
pub const LOG_DIR_MODE: u32 = fsafe::SHARED_DIR_MODE;

/// Name of the lock file the harness holds for its whole life.
pub const HARNESS_LOCK: &str = "harness.lock";

/// `PATH` when the environment has none (what `execvp` assumes).
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The first executable regular file `name` in `$PATH` (a bare name, as
/// `execvp` looks it up), so that a missing program is our error to word.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// A regular file with an execute bit.
pub fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    const ANY_EXEC_BIT: u32 = 0o111;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & ANY_EXEC_BIT != 0)
        .unwrap_or(false)
}
