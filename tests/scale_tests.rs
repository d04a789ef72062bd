//! Scale: hundreds of guests through a few spawners and one readiness loop,
//! and a teardown that does not grow into seconds. Figures are printed; the
//! bounds are generous (a shared 2-core machine), the benchmark has the
//! precise numbers (`scripts/benchmark-unikernel-performance.sh --scale`).

mod common;

use common::*;
use std::time::{Duration, Instant};

const COUNT: u32 = 300;
const GRACE_MS: u64 = 5000;

#[test]
fn three_hundred_guests_boot_and_are_torn_down_well_inside_the_grace() {
    let _slot = exclusive_slot();
    let dir = TempDir::new("scale300");
    let (out, doc) = run_report(
        dir.path(),
        COUNT,
        &[
            "--cid-range",
            &cid_block(400),
            "--max-boot-ms",
            "60000",
            "--grace-ms",
            &GRACE_MS.to_string(),
        ],
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(0), "{}", doc["summary"]);
    let id = doc["run_id"].as_str().unwrap();
    let left = wait_no_processes(id, Duration::from_secs(1));
    kill_run(id);
    assert!(left.is_empty(), "{} left", left.len());
    let teardown_ms = doc["teardown"]["ms"].as_f64().unwrap();
    eprintln!(
        "{COUNT} guests: all booted at {:.0} ms, teardown {teardown_ms:.0} ms, total {:.0} ms, \
         ukload CPU {:.0}+{:.0} ms, peak RSS {} KB",
        doc["timeline"]["booted_ms"].as_f64().unwrap(),
        doc["elapsed_ms"].as_f64().unwrap(),
        doc["harness"]["cpu_user_ms"].as_f64().unwrap(),
        doc["harness"]["cpu_sys_ms"].as_f64().unwrap(),
        doc["harness"]["peak_rss_kb"]
    );
    // Every guest exits on its first SIGTERM: teardown is bounded by how
    // fast 300 processes exit, not by the grace period or a /proc scan.
    assert!(
        teardown_ms < GRACE_MS as f64 / 2.0,
        "teardown {teardown_ms:.0} ms"
    );
    assert!(instances(&doc)
        .iter()
        .all(|i| i["teardown"] == "terminated"));
}

#[test]
fn sigint_to_three_hundred_booted_guests_ends_everything_within_two_seconds() {
    let _slot = exclusive_slot();
    let dir = TempDir::new("scale300int");
    let range = cid_block(400);
    let mut args = run_args(dir.path(), COUNT);
    args.extend(
        [
            "--cid-range",
            &range,
            "--max-boot-ms",
            "60000",
            "--grace-ms",
        ]
        .map(String::from),
    );
    args.push(GRACE_MS.to_string());
    // Hold the run with everything booted.
    let mut h = BackgroundRun::start(
        dir.path(),
        &args,
        &[("UKLOAD_TEST_PAUSE_PHASE", "memory:60000")],
    );
    h.wait_event("memory", Duration::from_secs(60));
    assert_eq!(h.processes().len(), COUNT as usize, "all guests running");
    let t = Instant::now();
    h.signal(libc::SIGINT);
    let st = h.wait_exit(Duration::from_secs(10));
    let exited = t.elapsed();
    let left = wait_no_processes(
        &h.run_id,
        Duration::from_secs(2).saturating_sub(t.elapsed()),
    );
    let gone = t.elapsed();
    kill_run(&h.run_id);
    eprintln!(
        "SIGINT to {COUNT} booted guests: ukload exited after {exited:?}, all gone after {gone:?}"
    );
    assert_eq!(st.code(), Some(130));
    assert!(left.is_empty(), "{} left after {gone:?}", left.len());
    assert!(gone <= Duration::from_secs(2), "{gone:?}");
}
