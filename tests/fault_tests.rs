//! Hostile guests mixed into 20-instance runs: every fault of the fixture
//! guest (`examples/fixture_guest.rs`, `--fault-map`) is reported with the
//! right cause, the healthy instances are measured, the verdict follows the
//! README's rules, nothing with the run's marker is left (checked by an
//! independent `/proc` scan), and the run ends within
//! `--boot-timeout` + `--grace-ms` + a small margin (no thread blocks past
//! its deadline).

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Instances per run: the faulty guests are mixed into a 20-instance run.
const COUNT: u32 = 20;
/// Short boot deadline so that faults which never answer end quickly.
const BOOT_TIMEOUT_S: u64 = 3;
/// SIGTERM → SIGKILL grace at cleanup.
const GRACE_MS: u64 = 300;
/// Process start-up, spawning 20 debug-built guests, teardown and the final
/// sweep on a shared 2-core machine.
const MARGIN: Duration = Duration::from_secs(4);
/// Hard stop for the `ukload` child if it hangs (the test then fails).
const HANG_LIMIT: Duration = Duration::from_secs(60);
/// `tree:N:MB` used below: children and MiB each.
const TREE_CHILDREN: u64 = 3;
const TREE_MB: u64 = 8;

struct FaultRun {
    code: Option<i32>,
    doc: Value,
    took: Duration,
}

/// `ukload run 20` of the fixture guest with `map` as its `--fault-map`.
fn fault_run(tag: &str, map: &str, extra: &[&str]) -> FaultRun {
    let dir = TempDir::new(tag);
    let mut cmd = ukload(dir.path());
    cmd.args(run_args(dir.path(), COUNT))
        .arg("--guest-bin")
        .arg(fixture_guest())
        .arg(format!("--guest-arg=--fault-map={map}"))
        .args(["--boot-timeout", &BOOT_TIMEOUT_S.to_string()])
        .args(["--grace-ms", &GRACE_MS.to_string()])
        // Only the faults may make the verdict: no timing or memory target.
        .args(["--max-boot-ms", "60000", "--max-mem-mb", "1000"])
        .args(extra);
    let t = Instant::now();
    let out = output_within(cmd, HANG_LIMIT);
    let took = t.elapsed();
    let doc = json_of(&out);
    let id = doc["run_id"].as_str().unwrap().to_string();
    // Independent of ukload's own check: nothing of the run is alive.
    assert_run_gone(&id, Duration::from_millis(500));
    assert_eq!(
        doc["teardown"]["survivors"].as_array().unwrap().len(),
        0,
        "ukload reported survivors: {doc:#}"
    );
    let limit = Duration::from_secs(BOOT_TIMEOUT_S) + Duration::from_millis(GRACE_MS) + MARGIN;
    assert!(
        took < limit,
        "run took {took:?}, more than boot timeout + grace + margin ({limit:?})"
    );
    FaultRun {
        code: out.status.code(),
        doc,
        took,
    }
}

fn inst(doc: &Value, i: usize) -> &Value {
    &instances(doc)[i]
}

fn boot_error(doc: &Value, i: usize) -> String {
    inst(doc, i)["boot_error"]
        .as_str()
        .unwrap_or_else(|| panic!("instance {i} should have failed: {:#}", inst(doc, i)))
        .to_string()
}

/// The instance failed and its error contains every one of `needles`.
fn assert_failed_with(doc: &Value, i: usize, needles: &[&str]) {
    let e = boot_error(doc, i);
    assert!(
        inst(doc, i)["boot_ms"].is_null(),
        "instance {i} has a boot time"
    );
    for n in needles {
        assert!(e.contains(n), "instance {i}: {n:?} not in {e:?}");
    }
}

/// Booted and measured: boot time, RSS and PSS, the CID it reported.
fn assert_healthy(doc: &Value, i: usize) {
    let x = inst(doc, i);
    assert!(x["boot_error"].is_null(), "instance {i}: {x:#}");
    assert!(x["boot_ms"].as_f64().unwrap() > 0.0, "instance {i}: {x:#}");
    assert!(x["pss_kb"].as_u64().unwrap() > 0, "instance {i}: {x:#}");
    assert!(x["rss_kb"].as_u64().unwrap() > 0, "instance {i}: {x:#}");
    assert!(!x["pids"].as_array().unwrap().is_empty());
}

fn assert_all_others_healthy(doc: &Value, faulty: usize) {
    for i in faulty..COUNT as usize {
        assert_healthy(doc, i);
        assert_eq!(inst(doc, i)["reported_cid"], inst(doc, i)["cid"]);
        assert_eq!(inst(doc, i)["teardown"], "terminated");
    }
}

#[test]
fn boot_faults_are_reported_with_their_cause_and_cleaned_up() {
    let _slot = shared_slot();
    let map = format!(
        "0=never-listen,1=crash-boot,2=exit:7,3=ignore-term,4=daemon,5=daemon-sleep,6=tree:{TREE_CHILDREN}:{TREE_MB}"
    );
    let r = fault_run("bootfaults", &map, &[]);
    let d = &r.doc;
    // 17 of 20 booted (>= 80%), nothing left: PARTIAL, exit 2. The guest
    // that ignores SIGTERM needed SIGKILL: named as a reason of its own.
    assert_eq!(r.code, Some(2), "{d:#}");
    assert_eq!(d["verdict"], "PARTIAL");
    assert_eq!(d["summary"]["booted"], 17);
    assert_eq!(
        d["summary"]["reasons"],
        serde_json::json!([
            "3 of 20 instances did not boot",
            format!("1 instance(s) did not stop on SIGTERM within the {GRACE_MS} ms grace period (SIGKILLed)")
        ])
    );

    // Never listens: boot timeout, then terminated at cleanup.
    assert_failed_with(d, 0, &["no reply within 3.0s"]);
    assert_eq!(inst(d, 0)["teardown"], "terminated");
    // Crash during boot: the launcher's death is reported with the signal
    // and the log, long before the boot deadline.
    let log1 = inst(d, 1)["log"].as_str().unwrap().to_string();
    assert_failed_with(
        d,
        1,
        &[
            "launcher exited before the guest was ready",
            "killed by SIGABRT",
            &log1,
        ],
    );
    assert_eq!(inst(d, 1)["exit_status"], "killed by SIGABRT");
    // (run.rs spells the instance's teardown "alreadygone"; the teardown
    // report's own field says "already_gone".)
    assert!(inst(d, 1)["teardown"]
        .as_str()
        .is_some_and(|t| t.replace('_', "") == "alreadygone"));
    // Exit with a code.
    assert_failed_with(d, 2, &["exit code 7"]);
    assert_eq!(inst(d, 2)["exit_status"], "exit code 7");

    // Ignores SIGTERM: boots, measured, SIGKILLed after the grace period.
    assert_healthy(d, 3);
    assert_eq!(inst(d, 3)["teardown"], "killed");
    assert!(inst(d, 3)["teardown_ms"].as_f64().unwrap() >= GRACE_MS as f64);
    assert_eq!(inst(d, 3)["exit_status"], "killed by SIGKILL");

    // Daemonizes (setsid, escapes the group) and the launcher exits 0: the
    // daemon answers, is found by its marker, measured and ended.
    assert_healthy(d, 4);
    assert_eq!(inst(d, 4)["exit_status"], "exit code 0");
    let launcher = inst(d, 4)["pid"].as_i64().unwrap();
    assert!(
        inst(d, 4)["pids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_i64() != Some(launcher)),
        "the daemon was not counted: {:#}",
        inst(d, 4)
    );
    // A sleeping daemon beside a serving launcher: both belong to the instance.
    assert_healthy(d, 5);
    assert!(inst(d, 5)["pids"].as_array().unwrap().len() >= 2);

    // A tree of children holding memory: all counted.
    assert_healthy(d, 6);
    let pids = inst(d, 6)["pids"].as_array().unwrap().len() as u64;
    assert!(pids > TREE_CHILDREN, "tree has {pids} pids");
    let pss_mb = inst(d, 6)["pss_kb"].as_u64().unwrap() / 1024;
    assert!(
        pss_mb >= TREE_CHILDREN * TREE_MB * 9 / 10,
        "tree PSS {pss_mb} MB < {} MB held by its children",
        TREE_CHILDREN * TREE_MB
    );
    assert_all_others_healthy(d, 7);
    eprintln!("boot faults run took {:?}", r.took);
}

#[test]
fn protocol_faults_on_line_framing_are_named() {
    let _slot = shared_slot();
    let map =
        "0=accept-silent,1=garbage,2=huge-line,3=bad-utf8,4=close-mid-frame,5=slow:50,6=wrong-id";
    let r = fault_run("linefaults", map, &[]);
    let d = &r.doc;
    // 13 of 20 booted (< 80%): FAIL, exit 1.
    assert_eq!(r.code, Some(1), "{d:#}");
    assert_eq!(d["verdict"], "FAIL");
    assert_eq!(d["summary"]["booted"], 13);
    // Accepts and never answers: retried until the boot deadline.
    assert_failed_with(d, 0, &["no reply within 3.0s", "no reply)"]);
    assert_failed_with(d, 1, &["protocol error", "not JSON"]);
    assert_failed_with(d, 2, &["protocol error", "exceeds the 10485760-byte limit"]);
    assert_failed_with(d, 3, &["protocol error", "not UTF-8"]);
    assert_failed_with(d, 4, &["protocol error", "stream ended inside a frame"]);
    // Slow-loris: the right reply, too slowly: the deadline holds.
    assert_failed_with(d, 5, &["no reply within 3.0s"]);
    assert_failed_with(
        d,
        6,
        &[
            "protocol error",
            "reply id 1001 does not match request id 1",
        ],
    );
    for i in 0..7 {
        // Misbehaving but alive: ended at cleanup like any other.
        assert_eq!(inst(d, i)["teardown"], "terminated", "{:#}", inst(d, i));
    }
    assert_all_others_healthy(d, 7);
    eprintln!("line protocol faults run took {:?}", r.took);
}

#[test]
fn protocol_faults_on_length_framing_are_named() {
    let _slot = shared_slot();
    let map =
        "0=huge-length,1=garbage,2=close-mid-frame,3=wrong-id,4=slow:50,5=huge-line,6=bad-utf8";
    // With --min-success 50, 13 of 20 is enough for PARTIAL.
    let r = fault_run(
        "lenfaults",
        map,
        &["--framing", "length", "--min-success", "50"],
    );
    let d = &r.doc;
    assert_eq!(r.code, Some(2), "{d:#}");
    assert_eq!(d["verdict"], "PARTIAL");
    // A 4 GiB length prefix is refused before anything is allocated.
    assert_failed_with(
        d,
        0,
        &["protocol error", "frame of 4294967295 bytes exceeds"],
    );
    assert_failed_with(d, 1, &["protocol error", "not JSON"]);
    assert_failed_with(d, 2, &["protocol error", "got 10 of"]);
    assert_failed_with(d, 3, &["protocol error", "does not match request id"]);
    assert_failed_with(d, 4, &["no reply within 3.0s"]);
    assert_failed_with(d, 5, &["protocol error", "frame of 20971520 bytes exceeds"]);
    assert_failed_with(d, 6, &["protocol error", "not UTF-8"]);
    assert_all_others_healthy(d, 7);
    eprintln!("length protocol faults run took {:?}", r.took);
}
