//! ukload itself killed by SIGINT, SIGTERM and SIGKILL during each phase
//! (spawn, boot, memory, cleanup): within about two seconds no process of
//! the run remains, and its CIDs are free again (a new `ukload run` over
//! exactly that CID range succeeds).
//!
//! Tests sync on the progress lines ukload prints on stderr. The memory
//! phase lasts milliseconds, so it is stretched with the test-only hook
//! `UKLOAD_TEST_PAUSE_PHASE=memory:MS`; cleanup is stretched by guests that
//! ignore SIGTERM and a long `--grace-ms`.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The promise: everything of the run is gone this soon after the signal.
const GONE_WITHIN: Duration = Duration::from_millis(2500);
/// How long to wait for ukload to reach the phase to interrupt.
const REACH_PHASE: Duration = Duration::from_secs(30);
/// Hard limit for the follow-up run that proves the CIDs are free.
const RERUN_LIMIT: Duration = Duration::from_secs(60);
/// Instances per interrupted run (and size of its CID range).
const COUNT: u32 = 4;
/// Memory-phase pause requested from the test hook (ended early by SIGINT/SIGTERM).
const MEMORY_PAUSE_MS: u64 = 20_000;
/// Cleanup grace used with SIGTERM-ignoring guests: far longer than GONE_WITHIN.
const LONG_GRACE_MS: u64 = 20_000;

#[derive(Clone, Copy, Debug)]
enum Phase {
    Spawn,
    Boot,
    Memory,
    Cleanup,
    /// Boot, with guests that ignore SIGTERM and a long grace period: the
    /// interrupted teardown must not wait the whole `--grace-ms`.
    BootStubborn,
}

/// A running `ukload run --progress json` whose stderr lines arrive on a channel.
struct Harness {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Harness {
    /// Waits for a progress event of kind `event` (returns it).
    fn wait_event(&mut self, event: &str) -> serde_json::Value {
        let line = self.wait_line(event, |l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["event"] == event)
        });
        serde_json::from_str(&line).unwrap()
    }

    /// Waits until a stderr line satisfies `pred` (returns it).
    fn wait_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + REACH_PHASE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "ukload never printed {what}; stderr so far: {:#?}",
                        self.seen
                    )
                }
            }
        }
    }
}

fn start(dir: &std::path::Path, range: &str, phase: Phase) -> Harness {
    let mut cmd = ukload(dir);
    cmd.args([
        "run",
        &COUNT.to_string(),
        "--format",
        "json",
        "--progress",
        "json",
        "--cid-range",
        range,
        "--max-boot-ms",
        "60000",
        "--log-dir",
    ])
    .arg(dir.join("logs"))
    .arg("--guest-bin")
    .arg(fixture_guest());
    match phase {
        // One spawn at a time, each waiting for a slow boot: spawning lasts.
        Phase::Spawn => cmd.args(["--concurrency", "1", "--guest-boot-delay-ms", "3000"]),
        // Everything spawned, nothing booted yet.
        Phase::Boot => cmd.args(["--guest-boot-delay-ms", "30000"]),
        Phase::BootStubborn => cmd
            .args(["--guest-boot-delay-ms", "30000"])
            .arg("--guest-arg=--ignore-sigterm")
            .args(["--grace-ms", &LONG_GRACE_MS.to_string()]),
        Phase::Memory => cmd.env(
            "UKLOAD_TEST_PAUSE_PHASE",
            format!("memory:{MEMORY_PAUSE_MS}"),
        ),
        Phase::Cleanup => cmd
            .arg("--guest-arg=--ignore-sigterm")
            .args(["--grace-ms", &LONG_GRACE_MS.to_string()]),
    };
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    Harness {
        child,
        lines,
        seen: Vec::new(),
    }
}

/// Interrupts `ukload` during `phase` with `sig`, checks that nothing of the
/// run is left within [`GONE_WITHIN`] and that its CID range is free.
fn kill_during(phase: Phase, sig: i32, range_start: u32) {
    let dir = TempDir::new(&format!("hk{phase:?}{sig}"));
    let range = format!("{range_start}-{}", range_start + COUNT - 1);
    let mut h = start(dir.path(), &range, phase);
    let first = h.wait_event("spawning");
    let run_id = first["run_id"].as_str().unwrap().to_string();
    match phase {
        Phase::Spawn => {
            h.wait_event("spawned");
        }
        Phase::Boot | Phase::BootStubborn => {
            for _ in 0..COUNT {
                h.wait_event("spawned");
            }
        }
        Phase::Memory => {
            h.wait_event("memory");
        }
        Phase::Cleanup => {
            h.wait_event("teardown");
        }
    }
    let alive = run_processes(&run_id).len();
    assert!(alive > 0, "{phase:?}: no instance alive when interrupting");
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(h.child.id() as i32, sig) };
    let t = Instant::now();
    let status = loop {
        if let Some(s) = h.child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > GONE_WITHIN {
            let _ = h.child.kill();
            kill_run(&run_id);
            panic!("{phase:?}/signal {sig}: ukload still running {GONE_WITHIN:?} after the signal");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let left = wait_no_processes(&run_id, GONE_WITHIN.saturating_sub(t.elapsed()));
    let took = t.elapsed();
    kill_run(&run_id);
    assert!(
        left.is_empty(),
        "{phase:?}/signal {sig}: left after {took:?}: {left:?}"
    );
    use std::os::unix::process::ExitStatusExt;
    match sig {
        libc::SIGKILL => assert_eq!(status.signal(), Some(libc::SIGKILL)),
        s => assert_eq!(status.code(), Some(128 + s), "{phase:?}: {:#?}", h.seen),
    }
    // The CIDs are free: a run needing exactly that range succeeds.
    let mut again = ukload(dir.path());
    again
        .args(run_args(&dir.path().join("again"), COUNT))
        .args(["--cid-range", &range, "--max-boot-ms", "60000"]);
    let out = output_within(again, RERUN_LIMIT);
    let doc = json_of(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{phase:?}/signal {sig}: range {range} not free again: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id2 = doc["run_id"].as_str().unwrap().to_string();
    let left2 = wait_no_processes(&id2, Duration::from_secs(2));
    kill_run(&id2);
    assert!(left2.is_empty(), "re-run left {left2:?}");
}

// Distinct CID ranges: the registry also treats a CID as busy while any
// live process of another run carries it (tests run in parallel).
macro_rules! kill_tests {
    ($($name:ident: $phase:expr, $sig:expr, $range_start:expr;)*) => {$(
        #[test]
        fn $name() {
            let _slot = shared_slot();
            kill_during($phase, $sig, $range_start);
        }
    )*};
}

kill_tests! {
    sigint_during_spawn: Phase::Spawn, libc::SIGINT, 200;
    sigterm_during_spawn: Phase::Spawn, libc::SIGTERM, 210;
    sigkill_during_spawn: Phase::Spawn, libc::SIGKILL, 220;
    sigint_during_boot: Phase::Boot, libc::SIGINT, 230;
    sigterm_during_boot: Phase::Boot, libc::SIGTERM, 240;
    sigkill_during_boot: Phase::Boot, libc::SIGKILL, 250;
    sigint_during_memory: Phase::Memory, libc::SIGINT, 260;
    sigterm_during_memory: Phase::Memory, libc::SIGTERM, 270;
    sigkill_during_memory: Phase::Memory, libc::SIGKILL, 280;
    sigint_during_cleanup: Phase::Cleanup, libc::SIGINT, 290;
    sigterm_during_cleanup: Phase::Cleanup, libc::SIGTERM, 300;
    sigkill_during_cleanup: Phase::Cleanup, libc::SIGKILL, 310;
    sigint_during_boot_with_stubborn_guests: Phase::BootStubborn, libc::SIGINT, 320;
    sigterm_during_boot_with_stubborn_guests: Phase::BootStubborn, libc::SIGTERM, 330;
    // The terminal closing (an ssh session dropped): exit 129, nothing left.
    sighup_during_boot: Phase::Boot, libc::SIGHUP, 340;
}
