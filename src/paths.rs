//! Where ukload keeps host-wide state.

use std::path::PathBuf;

/// Overrides the runtime directory (CID registry, run directories).
pub const ENV_RUNTIME_DIR: &str = "UKLOAD_RUNTIME_DIR";

/// Runtime directory: `$UKLOAD_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/ukload`,
/// else `/run/ukload`. Shared by every ukload process on the host.
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(ENV_RUNTIME_DIR).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("ukload");
    }
    PathBuf::from("/run/ukload")
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

/// Name of the lock file the harness holds for its whole life.
pub const HARNESS_LOCK: &str = "harness.lock";
