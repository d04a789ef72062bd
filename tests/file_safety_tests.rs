//! Files another user cannot redirect: a symlink or hard
//! link planted where ukload writes a log or a CID lock file, or a directory
//! another user owns, is refused with a message naming the path; the file it
//! points to is left unchanged, and nothing is left running.
//!
//! The attacker is uid 65534 (`nobody`): directories and symlinks are made
//! theirs with `chown`/`lchown`. Needs root (to chown); skipped otherwise.
//! Each test's CIDs are a block of its own (`common::cid_bounds`), so the
//! log and lock file names it plants are the ones its run would use.

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

const NOBODY: u32 = 65534;
const DEADLINE: Duration = Duration::from_secs(60);
/// What the attacker wants overwritten.
const PRECIOUS: &str = "root-only secret: must never change\n";

fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (to chown to nobody)");
            return;
        }
    };
}

/// A root-owned, root-only file outside the attacked directory.
fn precious(dir: &Path) -> PathBuf {
    let safe = dir.join("root-only");
    std::fs::create_dir_all(&safe).unwrap();
    std::fs::set_permissions(&safe, std::fs::Permissions::from_mode(0o700)).unwrap();
    let f = safe.join("only-file");
    std::fs::write(&f, PRECIOUS).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    f
}

fn assert_unchanged(target: &Path) {
    assert_eq!(
        std::fs::read_to_string(target).unwrap(),
        PRECIOUS,
        "{} was overwritten",
        target.display()
    );
}

/// `mkdir path` owned by nobody, mode 0755 (as `nobody` would create it).
fn nobodys_dir(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

/// A symlink `link -> target` owned by nobody (as `ln -s` by nobody makes it).
fn nobodys_symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
    std::os::unix::fs::lchown(link, Some(NOBODY), Some(NOBODY)).unwrap();
}

/// A root-owned directory like /tmp: world-writable with the sticky bit.
fn sticky_dir(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o1777)).unwrap();
}

/// `ukload run 1` with logs in `log_dir`, CIDs from `range`, isolated in `dir`.
fn run_one(dir: &Path, log_dir: &Path, range: &str) -> Output {
    let mut cmd = ukload(dir);
    cmd.args(["run", "1", "--format", "json", "-q", "--log-dir"])
        .arg(log_dir)
        .args(["--cid-range", range, "--max-boot-ms", "60000"]);
    output_within(cmd, DEADLINE)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Nothing of the run (if it got as far as a report) is left running.
fn assert_nothing_left(out: &Output) {
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
        if let Some(id) = doc["run_id"].as_str() {
            assert_run_gone(id, Duration::from_secs(2));
        }
    }
}

#[test]
fn a_log_dir_owned_by_another_user_is_refused_and_its_planted_symlink_not_followed() {
    require_root!();
    let dir = TempDir::new("fs-logdir-nobody");
    let target = precious(dir.path());
    let logs = dir.path().join("D");
    let (lo, hi) = cid_bounds(9);
    nobodys_dir(&logs);
    nobodys_symlink(&target, &logs.join(format!("unikernel_0_cid{lo}.log")));

    let out = run_one(dir.path(), &logs, &format!("{lo}-{hi}"));
    let err = stderr(&out);
    assert_unchanged(&target);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert_eq!(
        out.status.code(),
        Some(64),
        "refused before starting: {err}"
    );
    assert!(err.contains(&logs.display().to_string()), "{err}");
    assert!(err.contains("owned by uid 65534"), "{err}");
    assert!(err.contains("--log-dir"), "says what to do: {err}");
    assert_nothing_left(&out);
}

/// The instance whose log could not be opened failed, naming why; the run is
/// not PASS.
fn assert_log_refused(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "FAIL: {err}");
    let doc = json_of(out);
    let inst = &instances(&doc)[0];
    let why = inst["boot_error"].as_str().unwrap_or_default();
    assert!(why.contains("cannot open log"), "{why}");
    assert!(why.contains(needle), "{why}");
    assert!(inst["pid"].is_null(), "nothing was started: {inst}");
    assert_nothing_left(out);
}

#[test]
fn a_symlink_planted_in_a_shared_sticky_log_dir_is_not_followed() {
    require_root!();
    let dir = TempDir::new("fs-logdir-sticky");
    let target = precious(dir.path());
    let logs = dir.path().join("shared");
    let (cid, _) = cid_bounds(1);
    let log = logs.join(format!("unikernel_0_cid{cid}.log"));
    sticky_dir(&logs);
    nobodys_symlink(&target, &log);

    let out = run_one(dir.path(), &logs, &format!("{cid}-{cid}"));
    assert_unchanged(&target);
    assert_log_refused(&out, "symbolic link");
    assert!(
        std::fs::symlink_metadata(&log)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the planted link is left as it was"
    );
}

#[test]
fn a_hard_link_planted_at_the_log_name_is_not_written() {
    require_root!();
    let dir = TempDir::new("fs-logdir-hardlink");
    let target = precious(dir.path());
    let logs = dir.path().join("shared");
    let (cid, _) = cid_bounds(1);
    sticky_dir(&logs);
    std::fs::hard_link(&target, logs.join(format!("unikernel_0_cid{cid}.log"))).unwrap();

    let out = run_one(dir.path(), &logs, &format!("{cid}-{cid}"));
    assert_unchanged(&target);
    assert_log_refused(&out, "hard links");
}

#[test]
fn a_cids_dir_created_by_another_user_is_refused() {
    require_root!();
    let dir = TempDir::new("fs-cids-nobody");
    let target = precious(dir.path());
    let cids = dir.path().join("rt/cids");
    let (cid, _) = cid_bounds(1);
    std::fs::create_dir_all(dir.path().join("rt")).unwrap();
    nobodys_dir(&cids);
    nobodys_symlink(&target, &cids.join(format!("cid-{cid}.lock")));

    let out = run_one(
        dir.path(),
        &dir.path().join("logs"),
        &format!("{cid}-{cid}"),
    );
    let err = stderr(&out);
    assert_unchanged(&target);
    assert!(
        !matches!(out.status.code(), Some(0) | Some(1) | Some(2)),
        "refused before any instance: {err}"
    );
    assert!(err.contains(&cids.display().to_string()), "{err}");
    assert!(err.contains("owned by uid 65534"), "{err}");
    assert_nothing_left(&out);
}

#[test]
fn a_symlink_or_hard_link_at_a_cid_lock_file_is_not_followed() {
    require_root!();
    let dir = TempDir::new("fs-cids-links");
    let target = precious(dir.path());
    let cids = dir.path().join("rt/cids");
    let (sym, hard) = cid_bounds(2);
    std::fs::create_dir_all(&cids).unwrap();
    nobodys_symlink(&target, &cids.join(format!("cid-{sym}.lock")));
    std::fs::hard_link(&target, cids.join(format!("cid-{hard}.lock"))).unwrap();

    for (cid, needle) in [(sym, "symbolic link"), (hard, "hard links")] {
        let out = run_one(
            dir.path(),
            &dir.path().join("logs"),
            &format!("{cid}-{cid}"),
        );
        let err = stderr(&out);
        assert_unchanged(&target);
        assert!(
            !matches!(out.status.code(), Some(0) | Some(1) | Some(2)),
            "refused before any instance: {err}"
        );
        assert!(err.contains(&format!("cid-{cid}")), "names the file: {err}");
        assert!(err.contains(needle), "{err}");
        assert_nothing_left(&out);
    }
}

#[test]
fn a_runtime_dir_owned_by_another_user_is_refused() {
    require_root!();
    let dir = TempDir::new("fs-rt-nobody");
    nobodys_dir(&dir.path().join("rt"));
    let out = run_one(dir.path(), &dir.path().join("logs"), &cid_block(1));
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("owned by uid 65534"), "{err}");
    assert!(
        !dir.path().join("rt/cids").exists(),
        "nothing created in another user's directory"
    );
    assert_nothing_left(&out);
}

#[test]
fn directories_ukload_creates_have_safe_modes_and_owner() {
    require_root!();
    let dir = TempDir::new("fs-modes");
    let out = run_one(dir.path(), &dir.path().join("logs/deep"), &cid_block(1));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for (d, mode) in [
        ("rt", 0o755),
        ("rt/cids", 0o755),
        ("rt/runs", 0o755),
        ("logs/deep", 0o755),
    ] {
        let m = std::fs::symlink_metadata(dir.path().join(d)).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.uid(), 0, "{d}");
        assert_eq!(m.mode() & 0o7777, mode, "{d}");
    }
    assert_nothing_left(&out);
}

#[test]
fn fsafe_refuses_writable_dirs_and_accepts_sticky_ones() {
    let dir = TempDir::new("fs-unit");
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = ukload::fsafe::ensure_dir(&open, 0o755).unwrap_err();
    assert!(e.to_string().contains("chmod go-w"), "{e}");
    // Below a writable, non-sticky directory nothing is created.
    let below = open.join("x");
    assert!(ukload::fsafe::ensure_dir(&below, 0o755).is_err());
    assert!(!below.exists());

    let sticky = dir.path().join("sticky");
    sticky_dir(&sticky);
    ukload::fsafe::ensure_dir(&sticky.join("mine"), 0o700).unwrap();
    let m = std::fs::metadata(sticky.join("mine")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o700, "exact mode, whatever the umask");

    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&sticky, &link).unwrap();
    let e = ukload::fsafe::ensure_dir(&link, 0o755).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    // A symlink ABOVE the directory is resolved and checked instead.
    ukload::fsafe::ensure_dir(&link.join("mine"), 0o700).unwrap();

    // open_log truncates an existing file of ours through its descriptor.
    let log = dir.path().join("a.log");
    std::fs::write(&log, "old content").unwrap();
    let f = ukload::fsafe::open_log(&log).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 0);
    assert_eq!(std::fs::read(&log).unwrap().len(), 0);
}
