//! `ukload report merge` on reports from real runs.

mod common;

use common::*;
use std::time::Duration;

/// A real run's JSON report, saved to `name`.
fn report(dir: &std::path::Path, name: &str, count: u32, extra: &[&str]) -> std::path::PathBuf {
    let (_, doc) = run_report(dir, count, extra, Duration::from_secs(60));
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    path
}

fn merge(dir: &std::path::Path, args: &[&std::ffi::OsStr]) -> std::process::Output {
    let mut cmd = ukload(dir);
    cmd.args(["report", "merge"]).args(args);
    output_within(cmd, Duration::from_secs(30))
}

#[test]
fn reports_of_several_runs_merge_into_one_verdict_and_statistics() {
    let dir = TempDir::new("merge");
    let a = report(
        dir.path(),
        "a.json",
        3,
        &["--cid-range", &cid_block(10), "--max-boot-ms", "60000"],
    );
    let b = report(
        dir.path(),
        "b.json",
        2,
        &[
            "--cid-range",
            &cid_block(10),
            "--max-boot-ms",
            "60000",
            "--guest-bin",
            fixture_guest().to_str().unwrap(),
            "--guest-arg=--fault-map=1=exit:3",
        ],
    );
    // Human: both runs, the totals, the worst verdict.
    let out = merge(dir.path(), &[a.as_os_str(), b.as_os_str()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("Merged load test: 2 report(s)"), "{text}");
    assert!(text.contains("Overall: 4/5 booted"), "{text}");
    assert!(text.contains("Verdict: FAIL"), "{text}");

    // JSON: per host and overall statistics from every instance.
    let fmt = std::ffi::OsStr::new("--format");
    let out = merge(
        dir.path(),
        &[a.as_os_str(), b.as_os_str(), fmt, "json".as_ref()],
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["total"], 5);
    assert_eq!(m["booted"], 4);
    assert_eq!(m["boot_ms"]["count"], 4);
    assert_eq!(m["hosts"][0]["verdict"], "PASS");
    assert_eq!(m["hosts"][1]["verdict"], "FAIL");
    assert_eq!(m["hosts"][0]["host"], m["hosts"][1]["host"], "same machine");
    assert_eq!(m["verdict"], "FAIL");

    // JUnit: a suite per report, counts consistent, the failed boot named.
    let out = merge(
        dir.path(),
        &[a.as_os_str(), b.as_os_str(), fmt, "junit".as_ref()],
    );
    let x = String::from_utf8_lossy(&out.stdout);
    assert_eq!(x.matches("<testsuite ").count(), 2, "{x}");
    assert_eq!(
        x.matches("<testcase ").count(),
        10,
        "boot and cleanup per instance: {x}"
    );
    assert_eq!(x.matches("<failure ").count(), 1, "{x}");
    assert!(x.contains(r#"tests="10" failures="1""#), "{x}");
    assert!(x.contains("exit code 3"), "{x}");

    // HTML: self-contained, a row per report, the histogram.
    let out = merge(
        dir.path(),
        &[a.as_os_str(), b.as_os_str(), fmt, "html".as_ref()],
    );
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(!page.contains("<script") && !page.contains(" src="));
    assert_eq!(page.matches("<tr><td>").count(), 2, "{page}");
    assert!(page.contains("id=\"histogram\"") && page.contains(">FAIL<"));

    // Two passing reports pass.
    let out = merge(dir.path(), &[a.as_os_str(), a.as_os_str()]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_file_that_is_not_a_report_is_named() {
    let dir = TempDir::new("merge-bad");
    let bad = dir.path().join("notes.txt");
    std::fs::write(&bad, "hello").unwrap();
    let out = merge(dir.path(), &[bad.as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("notes.txt") && err.contains("not JSON"),
        "{err}"
    );
}
