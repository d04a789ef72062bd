//! Containment: what a hostile guest or a CI runner's timeout does, and that
//! nothing survives it.
//!
//! - the job's whole process group SIGKILLed (`timeout -s KILL`) → the
//!   watchdog, in a session of its own, ends the run's cgroup;
//! - a guest child that clears its environment, `setsid`s and double-forks
//!   (no marker, no group of ours) → ended, named, and the run is not PASS;
//! - a fork chain (fork, setsid, exit, every ms) → ended by `cgroup.kill`;
//! - a guest that crashes after booting → reported as crashed, not PASS;
//! - a harness stopped with SIGSTOP and no terminal → resumed by the watchdog;
//! - a run cgroup whose harness and watchdog both died → reaped by the next
//!   ukload that starts;
//! - the same escapes with cgroups disabled (`UKLOAD_CONTAINMENT=marker`):
//!   adopted orphans are found as the subreaper's children.
//!
//! Cgroup tests need a writable cgroup v2 tree (root here and in CI); without
//! one they say so and pass, except under `CI=true`, where they fail.
//! Each test has a CID block of its own (`common::cid_bounds`), so the
//! fixture's escapees can be found by their `argv[0]`
//! (`fixture-escapee-cid<CID>`).

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use ukload::supervisor::cgroup;

const RUN_DEADLINE: Duration = Duration::from_secs(90);

/// Is cgroup containment possible here? Fails under CI=true if not.
fn cgroups_usable() -> bool {
    if std::env::var("UKLOAD_CONTAINMENT").as_deref() == Ok("marker") {
        eprintln!("SKIP: UKLOAD_CONTAINMENT=marker disables cgroup containment");
        return false;
    }
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Unique per call: tests of this binary probe concurrently.
    let probe = format!("probe{n}-{}", std::process::id());
    match cgroup::RunCgroup::create(&probe) {
        Ok(c) => {
            c.kill_and_remove(Instant::now() + Duration::from_secs(1));
            true
        }
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but cgroup v2 is not writable: {e}"
            );
            eprintln!("SKIP: cgroup v2 not writable here ({e})");
            false
        }
    }
}

/// Waits up to `d` for the fixture's leftovers of `lo..=hi` to be gone;
/// kills (by pid) and returns what was left.
fn leftovers_after(lo: u32, hi: u32, d: Duration) -> Vec<i32> {
    let end = Instant::now() + d;
    loop {
        let left = fixture_leftovers(lo, hi);
        if left.is_empty() || Instant::now() >= end {
            for &p in &left {
                // SAFETY: signalling, by pid, a fixture process of this test's own CIDs.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_cgroup_path(run_id: &str) -> Option<std::path::PathBuf> {
    cgroup::parent_dir()
        .ok()
        .map(|p| p.join(format!("{}{run_id}", cgroup::RUN_PREFIX)))
}

fn assert_no_run_cgroup(run_id: &str) {
    if let Some(p) = run_cgroup_path(run_id) {
        assert!(!p.exists(), "run cgroup {} was not removed", p.display());
    }
}

/// `ukload run COUNT` of the fixture guest with `--guest-arg=ARG`s.
fn fixture_run(
    dir: &Path,
    count: u32,
    cids: &str,
    guest_args: &[&str],
    extra: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Output, serde_json::Value) {
    let mut cmd = ukload(dir);
    cmd.args(run_args(dir, count))
        .arg("--guest-bin")
        .arg(fixture_guest())
        .args(["--cid-range", cids])
        .args(["--grace-ms", "500", "--max-boot-ms", "60000"])
        .args(guest_args.iter().map(|a| format!("--guest-arg={a}")))
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = output_within(cmd, RUN_DEADLINE);
    let doc = json_of(&out);
    (out, doc)
}

fn reasons(doc: &serde_json::Value) -> String {
    doc["summary"]["reasons"].to_string()
}

#[test]
fn runs_are_contained_by_cgroups_that_are_removed_afterwards() {
    let _slot = shared_slot();
    if !cgroups_usable() {
        return;
    }
    let dir = TempDir::new("cg-plain");
    let (out, doc) = fixture_run(dir.path(), 3, &cid_block(10), &[], &[], &[]);
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    assert!(
        doc["containment"]
            .as_str()
            .unwrap()
            .starts_with("cgroup v2"),
        "{}",
        doc["containment"]
    );
    let id = doc["run_id"].as_str().unwrap();
    assert!(wait_no_processes(id, Duration::from_secs(1)).is_empty());
    assert_no_run_cgroup(id);
}

#[test]
fn escapees_without_marker_or_group_are_ended_named_and_not_pass() {
    let _slot = shared_slot();
    if !cgroups_usable() {
        return;
    }
    let dir = TempDir::new("cg-escape");
    let (lo, hi) = cid_bounds(10);
    let range = format!("{lo}-{hi}");
    let (out, doc) = fixture_run(dir.path(), 2, &range, &["--fault=escape"], &[], &[]);
    let id = doc["run_id"].as_str().unwrap().to_string();
    let left = leftovers_after(lo, hi, Duration::from_secs(1));
    assert!(left.is_empty(), "escapees survived the run: {left:?}");
    assert!(run_processes(&id).is_empty());
    assert_no_run_cgroup(&id);
    // Not PASS: processes hid from the marker.
    assert_eq!(out.status.code(), Some(2), "{doc:#}");
    assert!(
        reasons(&doc).contains("dropped the run's marker"),
        "{doc:#}"
    );
    let unmarked: usize = doc["teardown"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["unmarked"].as_array().unwrap().len())
        .sum();
    assert_eq!(unmarked, 2, "each instance's escapee is named: {doc:#}");
    assert!(doc["teardown"]["survivors"].as_array().unwrap().is_empty());
}

#[test]
fn a_fork_chain_is_ended_by_the_cgroup() {
    let _slot = shared_slot();
    if !cgroups_usable() {
        return;
    }
    let dir = TempDir::new("cg-chain");
    let (lo, hi) = cid_bounds(10);
    let (out, doc) = fixture_run(
        dir.path(),
        2,
        &format!("{lo}-{hi}"),
        &["--fault=fork-chain"],
        &[],
        &[],
    );
    let id = doc["run_id"].as_str().unwrap().to_string();
    let left = leftovers_after(lo, hi, Duration::from_secs(1));
    assert!(left.is_empty(), "fork chain outlived the run: {left:?}");
    assert_no_run_cgroup(&id);
    assert_ne!(out.status.code(), Some(0), "{doc:#}");
    assert!(doc["teardown"]["survivors"].as_array().unwrap().is_empty());
}

#[test]
fn escapees_are_ended_without_cgroups_too() {
    let _slot = shared_slot();
    let dir = TempDir::new("mk-escape");
    let (lo, hi) = cid_bounds(10);
    let (out, doc) = fixture_run(
        dir.path(),
        2,
        &format!("{lo}-{hi}"),
        &["--fault=escape"],
        &[],
        &[("UKLOAD_CONTAINMENT", "marker")],
    );
    let id = doc["run_id"].as_str().unwrap().to_string();
    let left = leftovers_after(lo, hi, Duration::from_secs(1));
    assert!(left.is_empty(), "escapees survived: {left:?}");
    assert!(doc["containment"]
        .as_str()
        .unwrap()
        .starts_with("process groups and markers"));
    assert_eq!(out.status.code(), Some(2), "{doc:#}");
    assert!(reasons(&doc).contains("escaped their instance"), "{doc:#}");
    assert_eq!(
        doc["teardown"]["stragglers"].as_array().unwrap().len(),
        2,
        "{doc:#}"
    );
    assert!(run_processes(&id).is_empty());
}

#[test]
fn a_guest_that_crashes_after_booting_is_not_pass() {
    let _slot = shared_slot();
    let dir = TempDir::new("crash-after");
    // Instance 0 aborts 300 ms after it started; the memory phase waits 1.5 s.
    let (out, doc) = fixture_run(
        dir.path(),
        2,
        &cid_block(10),
        &["--fault-map=0=crash-after:300"],
        &[],
        &[("UKLOAD_TEST_PAUSE_PHASE", "memory:1500")],
    );
    let i0 = &instances(&doc)[0];
    assert!(i0["boot_ms"].as_f64().is_some(), "it booted first: {i0:#}");
    let crashed = i0["crashed"].as_str().expect("crash reported");
    assert!(crashed.contains("SIGABRT"), "{crashed}");
    assert!(
        i0["pss_kb"].is_null(),
        "no flattering 0 MB for the dead: {i0:#}"
    );
    assert!(instances(&doc)[1]["crashed"].is_null());
    // 1 of 2 healthy < 80 %: FAIL.
    assert_eq!(out.status.code(), Some(1), "{doc:#}");
    assert!(reasons(&doc).contains("died after booting"), "{doc:#}");
    assert!(run_processes(doc["run_id"].as_str().unwrap()).is_empty());
}

#[test]
fn sigkill_of_the_jobs_process_group_leaves_nothing() {
    let _slot = shared_slot();
    if !cgroups_usable() {
        return;
    }
    let dir = TempDir::new("cg-timeout");
    let logs = dir.path().join("logs").to_string_lossy().into_owned();
    let (lo, hi) = cid_bounds(20);
    let range = format!("{lo}-{hi}");
    // `timeout -s KILL` kills its whole process group: ukload and anything
    // else still in it. The guests escape (env -i, setsid) and boot slowly.
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", "2"])
        .arg(ukload_bin())
        .args(["run", "10", "--log-dir", &logs, "--cid-range", &range])
        .arg("--guest-bin")
        .arg(fixture_guest())
        .args([
            "--guest-arg=--fault=escape",
            "--guest-boot-delay-ms",
            "30000",
        ])
        .env("UKLOAD_RUNTIME_DIR", dir.path().join("rt"))
        .env("TMPDIR", dir.path())
        .env_remove("UKLOAD_RUN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap());
    let t = Instant::now();
    let st = cmd.status().unwrap();
    assert_eq!(st.code(), None, "timeout's group was SIGKILLed");
    assert!(t.elapsed() < Duration::from_secs(10));
    let text = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    let id = text
        .split("(run ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no run id in stderr: {text}"))
        .to_string();
    let left = wait_no_processes(&id, Duration::from_secs(2));
    kill_run(&id);
    let escaped = leftovers_after(lo, hi, Duration::from_millis(200));
    assert!(left.is_empty(), "guests outlived the job: {left:?}");
    assert!(escaped.is_empty(), "escapees outlived the job: {escaped:?}");
    let end = Instant::now() + Duration::from_secs(2);
    while run_cgroup_path(&id).is_some_and(|p| p.exists()) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_no_run_cgroup(&id);
}

#[test]
fn a_stopped_harness_without_terminal_is_resumed() {
    let _slot = shared_slot();
    let dir = TempDir::new("stopped");
    let range = cid_block(10);
    let mut args = run_args(dir.path(), 2);
    args.retain(|a| a != "-q");
    args.extend(
        [
            "--cid-range",
            &range,
            "--guest-boot-delay-ms",
            "300",
            "--max-boot-ms",
            "60000",
        ]
        .map(String::from),
    );
    // setsid: no controlling terminal, as under CI or cron.
    let mut h = BackgroundRun::start_detached(dir.path(), &args, &[]);
    h.signal(libc::SIGSTOP);
    let status = h.wait_exit(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(0),
        "resumed and finished: {:#?}",
        h.seen
    );
    h.assert_nothing_left(Duration::from_secs(1));
}

#[test]
fn a_dead_runs_cgroup_is_reaped_by_the_next_ukload() {
    // Exclusive: any ukload started meanwhile reaps a dead run's cgroup.
    let _slot = exclusive_slot();
    if !cgroups_usable() {
        return;
    }
    // A run id whose harness pid cannot exist (above any pid_max).
    let dead_id = format!("dead{}-999999999", std::process::id());
    let parent = cgroup::parent_dir().unwrap();
    let path = parent.join(format!("{}{dead_id}", cgroup::RUN_PREFIX));
    std::fs::create_dir(&path).unwrap();
    let mut sleeper = Command::new("sleep").arg("120").spawn().unwrap();
    std::fs::write(path.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
    let dir = TempDir::new("cg-stale");
    let (out, _doc) = fixture_run(dir.path(), 1, &cid_block(10), &[], &[], &[]);
    let end = Instant::now() + Duration::from_secs(5);
    let st = loop {
        if let Some(st) = sleeper.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() >= end {
            let _ = sleeper.kill();
            let _ = sleeper.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let gone = !path.exists();
    if !gone {
        let _ = std::fs::write(path.join("cgroup.kill"), "1");
        std::thread::sleep(Duration::from_millis(100));
        let _ = std::fs::remove_dir(&path);
    }
    assert!(gone, "stale run cgroup {} left", path.display());
    let st = st.expect("the stale cgroup's process was not killed");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL)
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn ps_and_cleanup_find_a_dead_runs_unmarked_processes_by_its_cgroup() {
    // Exclusive: any ukload started meanwhile reaps a dead run's cgroup.
    let _slot = exclusive_slot();
    if !cgroups_usable() {
        return;
    }
    let dir = TempDir::new("cg-psclean");
    let (lo, hi) = cid_bounds(10);
    let range = format!("{lo}-{hi}");
    let mut args = run_args(dir.path(), 2);
    args.retain(|a| a != "-q");
    args.extend(
        [
            "--cid-range",
            &range,
            "--max-boot-ms",
            "60000",
            "--guest-arg=--fault=escape",
        ]
        .map(String::from),
    );
    args.push("--guest-bin".into());
    args.push(fixture_guest().to_string_lossy().into_owned());
    let mut h = BackgroundRun::start_detached(
        dir.path(),
        &args,
        &[("UKLOAD_TEST_PAUSE_PHASE", "memory:30000")],
    );
    let id = h.run_id.clone();
    let harness = h.child.id();
    // Wait for both escapees, then kill the watchdog and the harness: the
    // run is dead and nothing of ours will end its processes.
    let end = Instant::now() + Duration::from_secs(20);
    while fixture_leftovers(lo, hi).len() < 2 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let escapees = fixture_leftovers(lo, hi);
    let children = std::fs::read_to_string(format!("/proc/{harness}/task/{harness}/children"))
        .unwrap_or_default();
    for c in children.split_whitespace() {
        let c: i32 = c.parse().unwrap();
        let comm = std::fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
        if comm.trim() == "ukload-watchdog" {
            // SAFETY: our own grandchild, by pid.
            unsafe { libc::kill(c, libc::SIGKILL) };
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    let _ = h.child.kill();
    let _ = h.child.wait();
    assert_eq!(escapees.len(), 2, "both escapees ran");

    let mut ps = ukload(dir.path());
    ps.args(["ps", "--format", "json"]);
    let out = output_within(ps, Duration::from_secs(20));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<i64> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["run_id"] == id.as_str())
        .flat_map(|r| {
            r["pids"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p.as_i64())
        })
        .collect();
    for e in &escapees {
        assert!(
            listed.contains(&(*e as i64)),
            "ps misses escapee {e}: {rows:#}"
        );
    }

    let mut cl = ukload(dir.path());
    cl.args(["cleanup", "--run", &id, "--grace-ms", "200"]);
    let out = output_within(cl, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let left = leftovers_after(lo, hi, Duration::from_secs(1));
    kill_run(&id);
    assert!(left.is_empty(), "cleanup left escapees {left:?}: {text}");
    assert!(run_processes(&id).is_empty(), "{text}");
    assert_no_run_cgroup(&id);
    assert_eq!(out.status.code(), Some(0), "{text}");
}

#[test]
fn a_stopped_guest_is_continued_and_ends_on_sigterm() {
    let _slot = shared_slot();
    let dir = TempDir::new("stopped-guest");
    // Instance 0 stops itself 300 ms in; the memory phase waits 1 s.
    let (out, doc) = fixture_run(
        dir.path(),
        2,
        &cid_block(10),
        &["--fault-map=0=stop-after:300"],
        &[],
        &[("UKLOAD_TEST_PAUSE_PHASE", "memory:1000")],
    );
    let i0 = &instances(&doc)[0];
    assert_eq!(i0["teardown"], "terminated", "{i0:#}");
    assert_eq!(i0["exit_status"], "killed by SIGTERM", "{i0:#}");
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    assert!(run_processes(doc["run_id"].as_str().unwrap()).is_empty());
}
