//! The host-wide CID registry under contention, through real `ukload`
//! processes sharing one runtime directory: 4 runs allocating 25 CIDs each at
//! once from one range of 100 get 100 distinct CIDs (read from what each guest
//! was given, `UKLOAD_CID` in its environment); a fifth fails at once with exit 75
//! and "range exhausted"; a holder killed with SIGKILL frees its CIDs for the
//! next allocation once its watchdog has ended its guests.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const HOLDERS: usize = 4;
const PER_HOLDER: u32 = 25;
/// Holders' guests never become ready during the test (they are interrupted).
const HOLD_BOOT_DELAY_MS: &str = "60000";
const REACH: Duration = Duration::from_secs(30);
/// "Immediately": the exhausted allocation fails this fast.
const FAIL_FAST: Duration = Duration::from_secs(2);
/// The watchdog ends a SIGKILLed harness's guests within this.
const WATCHDOG_WITHIN: Duration = Duration::from_millis(2500);

/// Run id suffix of a harness: ids are `<time>-<pid>`.
fn ours(pid: u32) -> impl Fn(&str) -> bool {
    move |v: &str| v.ends_with(&format!("-{pid}"))
}

/// `UKLOAD_CID` of every live process of the harness `pid`.
fn cids_of(pid: u32) -> BTreeSet<u32> {
    marked_pids(&ours(pid))
        .into_iter()
        .filter_map(|(p, _)| {
            let env = std::fs::read(format!("/proc/{p}/environ")).ok()?;
            env.split(|&b| b == 0).find_map(|kv| {
                std::str::from_utf8(kv.strip_prefix(b"UKLOAD_CID=")?)
                    .ok()?
                    .parse()
                    .ok()
            })
        })
        .collect()
}

fn spawn_holder(dir: &std::path::Path, n: usize, range: &str) -> Child {
    let mut cmd = ukload(dir);
    cmd.args(run_args(&dir.join(format!("h{n}")), PER_HOLDER))
        .args(["--cid-range", range])
        .args(["--guest-boot-delay-ms", HOLD_BOOT_DELAY_MS])
        .args(["--boot-timeout", "120"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn().unwrap()
}

/// Kills (SIGKILL, by pid) the holders still running when the test ends,
/// even by a panic; their watchdogs end their guests.
struct Holders(Vec<Child>);

impl Drop for Holders {
    fn drop(&mut self) {
        for h in &mut self.0 {
            if let Ok(None) = h.try_wait() {
                let _ = h.kill();
                let _ = h.wait();
            }
        }
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            panic!("harness {} did not exit within {within:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn four_concurrent_runs_get_distinct_cids_a_fifth_fails_fast_and_sigkill_frees() {
    let _slot = exclusive_slot();
    let dir = TempDir::new("cidrace");
    // One range, exactly as wide as the four holders need, shared by them all.
    let (lo, hi) = cid_bounds(HOLDERS as u32 * PER_HOLDER);
    let range = format!("{lo}-{hi}");
    // All four at once, in one shared runtime directory (one registry).
    let mut holders = Holders(
        (0..HOLDERS)
            .map(|n| spawn_holder(dir.path(), n, &range))
            .collect(),
    );
    let pids: Vec<u32> = holders.0.iter().map(Child::id).collect();
    let cleanup = |pids: &[u32]| {
        for &p in pids {
            for (q, _) in marked_pids(&ours(p)) {
                // SAFETY: by pid, processes carrying this test's run markers.
                unsafe { libc::kill(q, libc::SIGKILL) };
            }
        }
    };
    let end = Instant::now() + REACH;
    let mut by_holder: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    while Instant::now() < end {
        by_holder = pids.iter().map(|&p| (p, cids_of(p))).collect();
        if by_holder.values().all(|c| c.len() == PER_HOLDER as usize) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let all: Vec<u32> = by_holder.values().flatten().copied().collect();
    let distinct: BTreeSet<u32> = all.iter().copied().collect();
    if distinct.len() != HOLDERS * PER_HOLDER as usize {
        cleanup(&pids);
    }
    assert_eq!(
        distinct.len(),
        HOLDERS * PER_HOLDER as usize,
        "CIDs given to guests: {by_holder:?}"
    );
    assert_eq!(
        all.len(),
        distinct.len(),
        "a CID given twice: {by_holder:?}"
    );
    assert!(distinct.iter().all(|c| (lo..=hi).contains(c)));

    // A fifth: the range is exhausted, it fails at once naming range and holders.
    let mut fifth = ukload(dir.path());
    fifth
        .args(run_args(&dir.path().join("fifth"), 1))
        .args(["--cid-range", &range]);
    let t = Instant::now();
    let out = output_within(fifth, Duration::from_secs(30));
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(err.contains(&format!("range {range} exhausted")), "{err}");
    assert!(
        err.contains(&format!("pid {}", pids[0])),
        "names a holder: {err}"
    );
    assert!(took < FAIL_FAST, "exhausted range took {took:?}");

    // SIGKILL one holder: its watchdog ends its guests and the kernel drops
    // its locks; its CIDs are then free for the next allocation.
    let victim = 2;
    let freed = by_holder[&pids[victim]].clone();
    holders.0[victim].kill().unwrap();
    holders.0[victim].wait().unwrap();
    let t = Instant::now();
    let mut left = marked_pids(&ours(pids[victim]));
    while !left.is_empty() && t.elapsed() < WATCHDOG_WITHIN {
        std::thread::sleep(Duration::from_millis(20));
        left = marked_pids(&ours(pids[victim]));
    }
    if !left.is_empty() {
        cleanup(&pids);
    }
    assert!(left.is_empty(), "watchdog left {left:?}");
    let mut next = ukload(dir.path());
    next.args(run_args(&dir.path().join("next"), PER_HOLDER))
        .args(["--cid-range", &range, "--max-boot-ms", "60000"]);
    let out = output_within(next, Duration::from_secs(60));
    let doc = json_of(&out);
    if out.status.code() != Some(0) {
        cleanup(&pids);
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: BTreeSet<u32> = instances(&doc)
        .iter()
        .map(|i| i["reported_cid"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(
        got, freed,
        "the next run got exactly the killed holder's CIDs"
    );
    let next_id = doc["run_id"].as_str().unwrap().to_string();
    assert!(wait_no_processes(&next_id, Duration::from_secs(2)).is_empty());

    // The other holders end cleanly on SIGINT.
    for (n, h) in holders.0.iter_mut().enumerate() {
        if n == victim {
            continue;
        }
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(h.id() as i32, libc::SIGINT) };
    }
    for (n, h) in holders.0.iter_mut().enumerate() {
        if n != victim {
            let st = wait_exit(h, Duration::from_secs(10));
            assert_eq!(st.code(), Some(130));
        }
    }
    for &p in &pids {
        let left = marked_pids(&ours(p));
        cleanup(&[p]);
        assert!(left.is_empty(), "holder {p} left {left:?}");
    }
}

#[test]
fn deleting_the_cid_registry_under_a_live_run_does_not_share_its_cids() {
    let _slot = shared_slot();
    // Shared by runs A and B: B must find A's CIDs busy without the registry.
    let range = cid_block(4);
    let dir = TempDir::new("ciddel");
    let mut a = ukload(dir.path());
    a.args(run_args(&dir.path().join("a"), 2))
        .args(["--cid-range", &range, "--guest-boot-delay-ms", "30000"])
        .args(["--boot-timeout", "120"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut holders = Holders(vec![a.spawn().unwrap()]);
    let a_pid = holders.0[0].id();
    let end = Instant::now() + REACH;
    while cids_of(a_pid).len() < 2 {
        assert!(Instant::now() < end, "run A's guests never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    let a_cids = cids_of(a_pid);
    std::fs::remove_dir_all(dir.path().join("rt/cids")).unwrap();

    let mut b = ukload(dir.path());
    b.args(run_args(&dir.path().join("b"), 2)).args([
        "--cid-range",
        &range,
        "--max-boot-ms",
        "60000",
    ]);
    let out = output_within(b, REACH);
    let doc = json_of(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b_cids: BTreeSet<u32> = instances(&doc)
        .iter()
        .map(|i| i["cid"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(b_cids.len(), 2);
    assert!(
        a_cids.is_disjoint(&b_cids),
        "run B took run A's CIDs: A {a_cids:?}, B {b_cids:?}"
    );
    let b_run = doc["run_id"].as_str().unwrap();
    assert!(wait_no_processes(b_run, Duration::from_secs(2)).is_empty());

    // End A by SIGTERM, by pid; nothing of it is left.
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(a_pid as i32, libc::SIGTERM) };
    wait_exit(&mut holders.0[0], REACH);
    let end = Instant::now() + Duration::from_secs(3);
    while !marked_pids(&ours(a_pid)).is_empty() {
        assert!(
            Instant::now() < end,
            "run A left {:?}",
            marked_pids(&ours(a_pid))
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
