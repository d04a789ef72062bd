//! Progress and diagnostics on stderr: `--progress json` events, `-v`/`-vv`
//! and `RUST_LOG`, `-q`.

mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;

const RUN_DEADLINE: Duration = Duration::from_secs(90);

fn run(
    dir: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
    range: &str,
) -> std::process::Output {
    let mut cmd = ukload(dir);
    cmd.args([
        "run",
        "3",
        "--format",
        "json",
        "--cid-range",
        range,
        "--log-dir",
    ])
    .arg(dir.join("logs"))
    .args(extra)
    .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    output_within(cmd, RUN_DEADLINE)
}

#[test]
fn json_progress_is_one_event_per_line_for_every_instance() {
    let _slot = shared_slot();
    let dir = TempDir::new("progress-json");
    let (lo, hi) = cid_bounds(10);
    let out = run(
        dir.path(),
        &["--progress", "json"],
        &[],
        &format!("{lo}-{hi}"),
    );
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    let events: Vec<Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{err}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"spawning"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"teardown"), "{kinds:?}");
    let run_id = json_of(&out)["run_id"].clone();
    assert_eq!(events[0]["run_id"], run_id);
    for kind in ["spawned", "booted"] {
        let mut inst: Vec<u64> = events
            .iter()
            .filter(|e| e["event"] == kind)
            .map(|e| e["instance"].as_u64().unwrap())
            .collect();
        inst.sort();
        assert_eq!(inst, [0, 1, 2], "{kind}: {kinds:?}");
    }
    let t: Vec<f64> = events.iter().map(|e| e["t_ms"].as_f64().unwrap()).collect();
    assert!(
        t.windows(2).all(|w| w[0] <= w[1]),
        "time goes forward: {t:?}"
    );
    for e in events.iter().filter(|e| e["event"] == "booted") {
        assert!(e["boot_ms"].as_f64().unwrap() > 0.0, "{e}");
        assert!(
            (u64::from(lo)..=u64::from(hi)).contains(&e["cid"].as_u64().unwrap()),
            "{e}"
        );
    }
}

#[test]
fn verbosity_from_flags_and_rust_log() {
    let _slot = shared_slot();
    let dir = TempDir::new("verbosity");
    let debug_line = "ukload: debug: [0] launch";
    let range = cid_block(10);
    let plain = run(dir.path(), &[], &[], &range);
    let plain_err = String::from_utf8_lossy(&plain.stderr);
    assert_eq!(plain.status.code(), Some(0), "{plain_err}");
    assert!(!plain_err.contains(debug_line), "{plain_err}");
    for (extra, env) in [
        (&["-v"][..], &[][..]),
        (&["-vv"][..], &[][..]),
        (&["--verbose"][..], &[][..]),
        (&[][..], &[("RUST_LOG", "debug")][..]),
        (&[][..], &[("RUST_LOG", "warn,ukload=trace")][..]),
    ] {
        let out = run(dir.path(), extra, env, &range);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{extra:?} {env:?}: {err}");
        assert!(err.contains(debug_line), "{extra:?} {env:?}: {err}");
        assert!(
            err.contains("teardown: terminated after"),
            "{extra:?} {env:?}: {err}"
        );
    }
    // RUST_LOG wins over -v.
    let off = run(dir.path(), &["-v"], &[("RUST_LOG", "off")], &range);
    let off_err = String::from_utf8_lossy(&off.stderr);
    assert_eq!(off.status.code(), Some(0), "{off_err}");
    assert!(!off_err.contains("debug:"), "{off_err}");
    // -q: no progress, no information.
    let quiet = run(dir.path(), &["-q"], &[], &range);
    assert_eq!(quiet.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&quiet.stderr), "");
    // -q and --progress contradict each other.
    let both = run(dir.path(), &["-q", "--progress", "json"], &[], &range);
    assert_eq!(both.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&both.stderr).contains("-q and --progress"));
    let bad = run(dir.path(), &["--progress", "xml"], &[], &range);
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr)
        .contains("--progress: unknown progress format \"xml\""));
}
