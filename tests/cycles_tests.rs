//! `ukload cycles`: spawn → boot → terminate repeated; ukload's own fds,
//! threads and RSS stay flat; a failing guest fails the command and is named.
//! The long soak (`--cycles 1000`) is `scripts/soak-cycles.sh`.

mod common;

use common::*;
use std::time::Duration;

/// Cycles run in CI (the soak script runs 1000).
const CI_CYCLES: u32 = 60;
const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn sixty_cycles_stay_flat_and_leave_nothing() {
    let _slot = shared_slot();
    let dir = TempDir::new("cycles");
    let mut cmd = ukload(dir.path());
    cmd.args([
        "cycles",
        "--cycles",
        &CI_CYCLES.to_string(),
        "--format",
        "json",
        "-q",
    ])
    .args(["--cid-range", &cid_block(10), "--log-dir"])
    .arg(dir.path().join("logs"));
    let out = output_within(cmd, LIMIT);
    let doc = json_of(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{doc:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(doc["completed"], CI_CYCLES);
    assert_eq!(doc["succeeded"], CI_CYCLES);
    assert_eq!(doc["success_pct"], 100.0);
    assert_eq!(doc["boot_ms"]["count"], CI_CYCLES);
    assert!(doc["leaks"].as_array().unwrap().is_empty());
    // The figures are ukload's own and sane, and flat.
    let (s, e) = (&doc["start"], &doc["end"]);
    for k in ["fds", "threads", "rss_kb"] {
        assert!(s[k].as_u64().unwrap() > 0, "{k}: {doc:#}");
    }
    assert_eq!(s["threads"], e["threads"], "{doc:#}");
    assert!(e["fds"].as_u64() <= s["fds"].as_u64().map(|f| f + 2));
    let id = doc["run_id"].as_str().unwrap();
    assert_run_gone(id, Duration::from_secs(2));
}

#[test]
fn a_failing_guest_fails_the_cycles_and_is_named() {
    let _slot = shared_slot();
    let dir = TempDir::new("cyclesfail");
    let mut cmd = ukload(dir.path());
    cmd.args(["cycles", "--cycles", "3", "--per-cycle", "2", "-q"])
        .args(["--cid-range", &cid_block(10), "--guest-bin"])
        .arg(fixture_guest())
        .arg("--guest-arg=--fault-map=1=exit:9")
        .arg("--log-dir")
        .arg(dir.path().join("logs"));
    let out = output_within(cmd, LIMIT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("succeeded: 0/3"), "{text}");
    assert!(text.contains("cycle 1: 1 did not boot: [1]"), "{text}");
    assert!(text.contains("exit code 9"), "{text}");
    assert!(text.contains("✗ FAIL"), "{text}");
}

#[test]
fn bad_cycles_flags_are_usage_errors() {
    let _slot = shared_slot();
    let dir = TempDir::new("cyclesusage");
    for (args, needle) in [
        (vec!["cycles", "--cycles", "0"], "--cycles"),
        (vec!["cycles", "--cycles", "x"], "--cycles"),
        (vec!["cycles", "--per-cycle", "0"], "--per-cycle"),
        (vec!["cycles", "--cid-range", "9-3"], "--cid-range"),
        (vec!["cycles", "--grace-ms", "soon"], "--grace-ms"),
    ] {
        let mut cmd = ukload(dir.path());
        cmd.args(&args);
        let out = output_within(cmd, Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
    }
}

/// A guest that leaves an unmarked escapee every cycle (`env -i`, `setsid`,
/// double fork): no cycle is clean, and no escapee piles up.
#[test]
fn cycles_with_escaping_guests_are_not_clean_and_leave_nothing() {
    let _slot = shared_slot();
    let dir = TempDir::new("cycles-escape");
    let (lo, hi) = cid_bounds(10);
    let mut cmd = ukload(dir.path());
    cmd.args(["cycles", "--cycles", "3", "--format", "json", "-q"])
        .args(["--cid-range", &format!("{lo}-{hi}"), "--guest-bin"])
        .arg(fixture_guest())
        .arg("--guest-arg=--fault=escape")
        .arg("--log-dir")
        .arg(dir.path().join("logs"));
    let out = output_within(cmd, LIMIT);
    let doc = json_of(&out);
    let left = fixture_leftovers(lo, hi);
    for &p in &left {
        // SAFETY: by pid, this test's own fixture escapees (unique CIDs).
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    assert!(left.is_empty(), "escapees piled up: {left:?}");
    assert_ne!(out.status.code(), Some(0), "{doc:#}");
    assert_eq!(doc["succeeded"], 0, "{doc:#}");
    let failures = doc["failures"].to_string();
    assert!(
        failures.contains("dropped the run's marker") || failures.contains("escaped"),
        "{doc:#}"
    );
}
