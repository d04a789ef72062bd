//! ukload itself killed by SIGINT, SIGTERM and SIGKILL during each phase
//! (spawn, boot, memory, cleanup): within about two seconds no process of
//! the run remains, and its CIDs are free again (a new `ukload run` over
//! exactly that CID range succeeds).
//!
//! Tests sync on ukload's `--progress json` events (common::BackgroundRun). The memory
//! phase lasts milliseconds, so it is stretched with the test-only hook
//! `UKLOAD_TEST_PAUSE_PHASE=memory:MS`; cleanup is stretched by guests that
//! ignore SIGTERM and a long `--grace-ms`.

mod common;

use common::*;
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

/// The run's flags for `phase`.
fn args_for(
    dir: &std::path::Path,
    range: &str,
    phase: Phase,
) -> (Vec<String>, Vec<(&'static str, String)>) {
    let mut args: Vec<String> = run_args(dir, COUNT);
    args.extend(
        [
            "--cid-range",
            range,
            "--max-boot-ms",
            "60000",
            "--guest-bin",
        ]
        .map(String::from),
    );
    args.push(fixture_guest().to_string_lossy().into_owned());
    let mut env = Vec::new();
    let mut more = |a: &[&str]| args.extend(a.iter().map(|s| s.to_string()));
    let grace = LONG_GRACE_MS.to_string();
    match phase {
        // One spawn at a time, each waiting for a slow boot: spawning lasts.
        Phase::Spawn => more(&["--concurrency", "1", "--guest-boot-delay-ms", "3000"]),
        // Everything spawned, nothing booted yet.
        Phase::Boot => more(&["--guest-boot-delay-ms", "30000"]),
        Phase::BootStubborn => more(&[
            "--guest-boot-delay-ms",
            "30000",
            "--guest-arg=--ignore-sigterm",
            "--grace-ms",
            &grace,
        ]),
        Phase::Memory => env.push((
            "UKLOAD_TEST_PAUSE_PHASE",
            format!("memory:{MEMORY_PAUSE_MS}"),
        )),
        Phase::Cleanup => more(&["--guest-arg=--ignore-sigterm", "--grace-ms", &grace]),
    }
    (args, env)
}

/// Interrupts `ukload` during `phase` with `sig`, checks that nothing of the
/// run is left within [`GONE_WITHIN`] and that its CID range is free.
fn kill_during(phase: Phase, sig: i32) {
    let dir = TempDir::new(&format!("hk{phase:?}{sig}"));
    // A range of its own, exactly COUNT wide: the registry also treats a CID
    // as busy while any live process of another run carries it (tests run
    // in parallel), and the rerun must need every CID of it.
    let range = cid_block(COUNT);
    let (args, env) = args_for(dir.path(), &range, phase);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut h = BackgroundRun::start(dir.path(), &args, &env);
    match phase {
        Phase::Spawn => {
            h.wait_event("spawned", REACH_PHASE);
        }
        Phase::Boot | Phase::BootStubborn => {
            for _ in 0..COUNT {
                h.wait_event("spawned", REACH_PHASE);
            }
        }
        Phase::Memory => {
            h.wait_event("memory", REACH_PHASE);
        }
        Phase::Cleanup => {
            h.wait_event("teardown", REACH_PHASE);
        }
    }
    assert!(
        !h.processes().is_empty(),
        "{phase:?}: no instance alive when interrupting"
    );
    h.signal(sig);
    let t = Instant::now();
    let status = h.wait_exit(GONE_WITHIN);
    h.assert_nothing_left(GONE_WITHIN.saturating_sub(t.elapsed()));
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
    assert_run_gone(&id2, Duration::from_secs(2));
}

macro_rules! kill_tests {
    ($($name:ident: $phase:expr, $sig:expr;)*) => {$(
        #[test]
        fn $name() {
            let _slot = shared_slot();
            kill_during($phase, $sig);
        }
    )*};
}

kill_tests! {
    sigint_during_spawn: Phase::Spawn, libc::SIGINT;
    sigterm_during_spawn: Phase::Spawn, libc::SIGTERM;
    sigkill_during_spawn: Phase::Spawn, libc::SIGKILL;
    sigint_during_boot: Phase::Boot, libc::SIGINT;
    sigterm_during_boot: Phase::Boot, libc::SIGTERM;
    sigkill_during_boot: Phase::Boot, libc::SIGKILL;
    sigint_during_memory: Phase::Memory, libc::SIGINT;
    sigterm_during_memory: Phase::Memory, libc::SIGTERM;
    sigkill_during_memory: Phase::Memory, libc::SIGKILL;
    sigint_during_cleanup: Phase::Cleanup, libc::SIGINT;
    sigterm_during_cleanup: Phase::Cleanup, libc::SIGTERM;
    sigkill_during_cleanup: Phase::Cleanup, libc::SIGKILL;
    sigint_during_boot_with_stubborn_guests: Phase::BootStubborn, libc::SIGINT;
    sigterm_during_boot_with_stubborn_guests: Phase::BootStubborn, libc::SIGTERM;
    // The terminal closing (an ssh session dropped): exit 129, nothing left.
    sighup_during_boot: Phase::Boot, libc::SIGHUP;
}
