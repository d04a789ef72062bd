//! `ukload run` end to end, with the process and kraft (stand-in) launchers.
//! Each test runs in its own runtime directory and checks, independently of
//! ukload, that no process carrying its run's marker is left.

mod common;

use common::*;
use std::time::{Duration, Instant};

const RUN_DEADLINE: Duration = Duration::from_secs(120);

fn run_id(doc: &serde_json::Value) -> String {
    doc["run_id"].as_str().unwrap().to_string()
}

fn assert_clean(doc: &serde_json::Value) {
    assert_run_gone(&run_id(doc), Duration::from_secs(2));
    assert_eq!(
        doc["teardown"]["survivors"].as_array().unwrap().len(),
        0,
        "ukload reported survivors"
    );
}

#[test]
fn twenty_instances_boot_and_each_boot_time_matches_the_guests_own_clock() {
    let _slot = exclusive_slot();
    let dir = TempDir::new("twenty");
    let (out, doc) = run_report(
        dir.path(),
        20,
        &[
            "--launcher",
            "process",
            "--guest-bin",
            fixture_guest().to_str().unwrap(),
            "--guest-boot-delay-ms",
            "200",
            // Ready 5 ms apart: the check is the harness noticing each guest,
            // not 20 unoptimized test guests answering at the same instant on
            // 2 shared cores.
            "--guest-arg=--boot-delay-ms-per-instance=5",
            "--max-boot-ms",
            "60000",
        ],
        RUN_DEADLINE,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(doc["verdict"], "PASS");
    let inst = instances(&doc);
    assert_eq!(inst.len(), 20);
    let mut overheads = Vec::new();
    for i in inst {
        let boot = i["boot_ms"].as_f64().expect("booted");
        let guest = i["guest_ready_ms"]
            .as_f64()
            .expect("guest reported its ready stamp");
        let over = i["probe_overhead_ms"].as_f64().unwrap();
        // The guest slept 200 ms before listening: no true boot is faster.
        assert!(
            guest >= 200.0,
            "guest ready at {guest} ms < injected 200 ms delay"
        );
        assert!(
            boot >= guest,
            "boot {boot} before the guest was ready {guest}"
        );
        assert!((boot - guest - over).abs() < 1e-6);
        // The probe notices readiness within a few ms (backoff is capped at 4 ms);
        // one instance may lose a scheduler slice on a loaded 2-core machine, so
        // the per-instance bound is generous and the median is the real check.
        assert!(
            over < 100.0,
            "instance {} measured {over:.1} ms after the guest was ready",
            i["index"]
        );
        overheads.push(over);
        assert_eq!(
            i["reported_cid"], i["cid"],
            "guest reports the CID it was given"
        );
    }
    overheads.sort_by(|a, b| a.total_cmp(b));
    assert!(
        overheads[10] < 15.0,
        "median probe overhead {:.1} ms is not a few ms",
        overheads[10]
    );
    let cids: std::collections::BTreeSet<u64> =
        inst.iter().map(|i| i["cid"].as_u64().unwrap()).collect();
    assert_eq!(cids.len(), 20);
    assert!(cids.iter().all(|c| (200..=299).contains(c)));
    assert_clean(&doc);
}

#[test]
fn memory_in_a_daemonized_grandchild_is_measured_and_the_kraft_vmm_is_killed() {
    let _slot = shared_slot();
    const STEP_MB: f64 = 48.0;
    let dir = TempDir::new("kraftmem");
    let mut cmd = ukload(dir.path());
    cmd.args(run_args(dir.path(), 3))
        .args(["--launcher", "kraft", "--kraft-bin"])
        .arg(kraft_standin())
        .arg("--image")
        .arg(fixture_guest())
        .args([
            "--kraft-arg=-a",
            &format!("--kraft-arg=--alloc-mb-per-instance={STEP_MB}"),
        ])
        .args(["--max-boot-ms", "60000", "--max-mem-mb", "1000"]);
    let out = output_within(cmd, RUN_DEADLINE);
    let doc = json_of(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}\n{doc:#}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inst = instances(&doc);
    for metric in ["pss_kb", "rss_kb"] {
        let base = inst[0][metric].as_f64().unwrap() / 1024.0;
        for (k, i) in inst.iter().enumerate().skip(1) {
            let got = i[metric].as_f64().unwrap() / 1024.0 - base;
            let want = STEP_MB * k as f64;
            assert!(
                (got - want).abs() <= want * 0.05,
                "instance {k}: {metric} grew by {got:.1} MB over instance 0, expected {want} MB ±5%"
            );
        }
    }
    for i in inst {
        // kraft (bash → tail) and the daemonized VMM, which left kraft's group.
        let pids = i["pids"].as_array().unwrap();
        assert!(
            pids.len() >= 2,
            "instance tree should hold kraft and its VMM: {pids:?}"
        );
        assert!(matches!(
            i["teardown"].as_str(),
            Some("terminated") | Some("killed")
        ));
    }
    assert_clean(&doc);
}

#[test]
fn guest_ignoring_sigterm_is_killed_after_the_grace_period() {
    let _slot = shared_slot();
    let dir = TempDir::new("ignterm");
    let mut cmd = ukload(dir.path());
    cmd.args(run_args(dir.path(), 2))
        .args(["--guest-bin"])
        .arg(fixture_guest())
        .args([
            "--guest-arg=--ignore-sigterm",
            "--grace-ms",
            "300",
            "--max-boot-ms",
            "60000",
        ]);
    let out = output_within(cmd, RUN_DEADLINE);
    let doc = json_of(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Needing SIGKILL is a finding: PARTIAL, with its own reason.
    assert_eq!(doc["verdict"], "PARTIAL");
    assert!(doc["summary"]["reasons"][0]
        .as_str()
        .unwrap()
        .contains("did not stop on SIGTERM within the 300 ms grace period"));
    for i in instances(&doc) {
        assert_eq!(i["teardown"], "killed", "{i:#}");
        assert!(i["teardown_ms"].as_f64().unwrap() >= 300.0);
        assert_eq!(i["exit_status"], "killed by SIGKILL");
    }
    assert_clean(&doc);
}

#[test]
fn guest_that_never_listens_fails_its_boot_and_is_cleaned_up() {
    let _slot = shared_slot();
    let dir = TempDir::new("nolisten");
    let mut cmd = ukload(dir.path());
    cmd.args(run_args(dir.path(), 2))
        .args(["--guest-bin"])
        .arg(fixture_guest())
        .args(["--guest-arg=--never-listen", "--boot-timeout", "1"]);
    let t = Instant::now();
    let out = output_within(cmd, RUN_DEADLINE);
    let doc = json_of(&out);
    assert_eq!(out.status.code(), Some(1), "FAIL expected");
    assert_eq!(doc["verdict"], "FAIL");
    for i in instances(&doc) {
        let e = i["boot_error"].as_str().unwrap();
        assert!(e.contains("no reply within"), "{e}");
        assert!(i["boot_ms"].is_null());
    }
    // Boot timeout 1 s + grace 2 s + margin.
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    assert_clean(&doc);
}

#[test]
fn launcher_that_exits_at_once_is_reported_with_its_status_and_log() {
    let _slot = shared_slot();
    let dir = TempDir::new("exit3");
    let mut cmd = ukload(dir.path());
    cmd.args(run_args(dir.path(), 1))
        .args(["--guest-bin"])
        .arg(fixture_guest())
        .args(["--guest-arg=--exit-code=3", "--boot-timeout", "30"]);
    let t = Instant::now();
    let out = output_within(cmd, RUN_DEADLINE);
    let doc = json_of(&out);
    assert_eq!(out.status.code(), Some(1));
    let i = &instances(&doc)[0];
    let e = i["boot_error"].as_str().unwrap();
    assert!(e.contains("exit code 3"), "{e}");
    assert!(
        e.contains(i["log"].as_str().unwrap()),
        "error names the log: {e}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "a dead launcher must not wait for the boot timeout"
    );
    assert_clean(&doc);
}

#[test]
fn two_runs_at_once_on_overlapping_ranges_never_share_a_cid() {
    let _slot = shared_slot();
    let dir = TempDir::new("twoRuns");
    let spawn = |range: &str, tag: &str| {
        let mut cmd = ukload(dir.path());
        cmd.args(run_args(&dir.path().join(tag), 12)).args([
            "--cid-range",
            range,
            "--guest-boot-delay-ms",
            "300",
            "--max-boot-ms",
            "60000",
        ]);
        std::thread::spawn(move || output_within(cmd, RUN_DEADLINE))
    };
    // Two ranges of 30 that share their middle 15 CIDs.
    let (lo, _) = cid_bounds(45);
    let a = spawn(&format!("{lo}-{}", lo + 29), "a");
    let b = spawn(&format!("{}-{}", lo + 15, lo + 44), "b");
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let (da, db) = (json_of(&a), json_of(&b));
    assert_eq!(
        a.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&a.stderr)
    );
    assert_eq!(
        b.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&b.stderr)
    );
    let mut all = Vec::new();
    for d in [&da, &db] {
        for i in instances(d) {
            all.push(i["reported_cid"].as_u64().expect("guest reports its CID"));
        }
    }
    let uniq: std::collections::BTreeSet<_> = all.iter().collect();
    assert_eq!(uniq.len(), 24, "CIDs shared between runs: {all:?}");
    assert_clean(&da);
    assert_clean(&db);
}

#[test]
fn exhausted_cid_range_fails_fast_naming_range_and_holder() {
    let _slot = shared_slot();
    let dir = TempDir::new("exhaust");
    // Exactly as wide as the holder's 5 instances, shared with the late run.
    let range = cid_block(5);
    let mut holder = ukload(dir.path());
    holder.args(run_args(&dir.path().join("a"), 5)).args([
        "--cid-range",
        &range,
        "--guest-boot-delay-ms",
        "3000",
        "--max-boot-ms",
        "60000",
    ]);
    let h = std::thread::spawn(move || output_within(holder, RUN_DEADLINE));
    // Wait until the holder has its CIDs (its instances exist).
    let end = Instant::now() + Duration::from_secs(20);
    while marked_pids(&|_| true)
        .iter()
        .all(|(_, c)| !c.contains("uds:") || !c.contains(dir.path().to_str().unwrap()))
        && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        marked_pids(&|_| true)
            .iter()
            .any(|(_, c)| c.contains(dir.path().to_str().unwrap())),
        "the holder run never started its instances"
    );
    let mut late = ukload(dir.path());
    late.args(run_args(&dir.path().join("b"), 1))
        .args(["--cid-range", &range]);
    let t = Instant::now();
    let out = output_within(late, Duration::from_secs(30));
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "stderr: {err}");
    assert!(err.contains(&range), "names the range: {err}");
    assert!(took < Duration::from_secs(2), "not fast: {took:?}");
    let a = h.join().unwrap();
    let da = json_of(&a);
    assert!(err.contains(&run_id(&da)), "names the holder run: {err}");
    assert_eq!(a.status.code(), Some(0));
    assert_clean(&da);
}

/// Signals ukload while its 6 instances boot; returns its exit code.
/// Panics if anything of the run is left 2.5 s after the signal.
fn interrupt_mid_boot(sig: i32) -> Option<i32> {
    let dir = TempDir::new("intr");
    let mut args = run_args(dir.path(), 6);
    args.extend(["--guest-boot-delay-ms", "20000", "--cid-range"].map(String::from));
    args.push(cid_block(6));
    let mut h = BackgroundRun::start(dir.path(), &args, &[]);
    for _ in 0..6 {
        h.wait_event("spawned", Duration::from_secs(20));
    }
    h.signal(sig);
    let t = Instant::now();
    let status = h.wait_exit(Duration::from_secs(10));
    h.assert_nothing_left(Duration::from_millis(2500).saturating_sub(t.elapsed()));
    status.code()
}

#[test]
fn sigint_mid_boot_tears_everything_down() {
    let _slot = shared_slot();
    assert_eq!(interrupt_mid_boot(libc::SIGINT), Some(130));
}

#[test]
fn sigterm_mid_boot_tears_everything_down() {
    let _slot = shared_slot();
    assert_eq!(interrupt_mid_boot(libc::SIGTERM), Some(143));
}

#[test]
fn sigkill_of_ukload_leaves_nothing_after_two_seconds() {
    let _slot = shared_slot();
    assert_eq!(interrupt_mid_boot(libc::SIGKILL), None, "killed by signal");
}

#[test]
fn seed_script_prints_the_five_phases_and_pass() {
    let _slot = shared_slot();
    let dir = TempDir::new("seed");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/load-test-unikernels.sh"
    ))
    .arg("4")
    .arg("--log-dir")
    .arg(dir.path().join("logs"))
    .arg("-q")
    .env("UKLOAD", ukload_bin())
    .env("UKLOAD_RUNTIME_DIR", dir.path().join("rt"))
    .env("PATH", "/usr/bin:/bin")
    .stdin(std::process::Stdio::null());
    let out = output_within(cmd, RUN_DEADLINE);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in [
        "Phase 1: Concurrent Spawning",
        "Phase 2: Boot Time Analysis",
        "Phase 3: Memory Usage Analysis",
        "Phase 4: CID Allocation Analysis",
        "Phase 5: Cleanup",
        "✓ PASS",
        "Vsock port: 5252",
        "CID range: 200-299",
    ] {
        assert!(text.contains(p), "missing {p:?} in:\n{text}");
    }
    assert_eq!(text.matches("Boot successful").count(), 4);
}

#[test]
fn bad_flags_exit_64_naming_the_flag_and_start_nothing() {
    let _slot = shared_slot();
    let dir = TempDir::new("usage");
    for (args, needle) in [
        (vec!["run", "0"], "COUNT"),
        (vec!["run", "x"], "COUNT"),
        (vec!["run", "2", "--cid-range", "299-200"], "--cid-range"),
        (vec!["run", "2", "--cid-range", "1-5"], "--cid-range"),
        (vec!["run", "2", "--launcher", "vmware"], "--launcher"),
        (vec!["run", "2", "--port", "0"], "--port"),
        (vec!["run", "2", "--format", "xml"], "--format"),
        (vec!["run", "2", "--mem-metric", "vss"], "--mem-metric"),
        (vec!["run", "2", "--concurrency", "0"], "--concurrency"),
        (vec!["run", "200", "--cid-range", "200-209"], "--cid-range"),
        (
            vec!["run", "1", "--log-dir", "/proc/no-such-dir"],
            "--log-dir",
        ),
        (vec!["run", "1", "--launcher", "exec"], "--exec"),
        (
            vec!["run", "1", "--launcher", "exec", "--exec", "x {bogus}"],
            "{bogus}",
        ),
        (vec!["run", "--no-such-flag"], "--no-such-flag"),
    ] {
        let mut cmd = ukload(dir.path());
        cmd.args(&args);
        let out = output_within(cmd, Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: message should name {needle}: {err}"
        );
    }
    assert!(
        !dir.path().join("logs").exists(),
        "a usage error started something"
    );
}

#[test]
fn missing_kraft_exits_69_and_says_how_to_install() {
    let _slot = shared_slot();
    let dir = TempDir::new("nokraft");
    let mut cmd = ukload(dir.path());
    cmd.args(run_args(dir.path(), 1)).args([
        "--launcher",
        "kraft",
        "--kraft-bin",
        "/nonexistent/kraft",
    ]);
    let out = output_within(cmd, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(err.contains("kraft") && err.contains("install"), "{err}");
}

#[test]
fn length_framing_boots_with_the_seeds_wire_format() {
    let _slot = shared_slot();
    let dir = TempDir::new("lenframe");
    let (out, doc) = run_report(
        dir.path(),
        3,
        &["--framing", "length", "--max-boot-ms", "60000"],
        RUN_DEADLINE,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(instances(&doc).iter().all(|i| i["boot_ms"].is_number()));
    assert_clean(&doc);
}

#[test]
fn exec_launcher_runs_a_template_and_probes_its_uds() {
    let _slot = shared_slot();
    let dir = TempDir::new("exec");
    let mut cmd = ukload(dir.path());
    let tpl = format!(
        "exec {} --listen uds:{{uds}} --port {{port}} --cid {{cid}}",
        guest_bin().display()
    );
    cmd.args(run_args(dir.path(), 3)).args([
        "--launcher",
        "exec",
        "--exec",
        &tpl,
        "--max-boot-ms",
        "60000",
    ]);
    let out = output_within(cmd, RUN_DEADLINE);
    let doc = json_of(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in instances(&doc) {
        assert_eq!(i["reported_cid"], i["cid"]);
    }
    assert_clean(&doc);
}

#[test]
fn tool_call_phase_executes_the_tool_in_every_instance_and_reports_latency() {
    let _slot = shared_slot();
    let dir = TempDir::new("toolcall");
    let (out, doc) = run_report(
        dir.path(),
        10,
        &[
            "--tool-call",
            r#"add:{"a":2,"b":3}"#,
            "--tool-expect",
            "2 + 3 = 5",
            "--max-boot-ms",
            "60000",
            "--max-tool-ms",
            "10000",
        ],
        RUN_DEADLINE,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{doc:#}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in instances(&doc) {
        assert_eq!(i["tool_result"], "2 + 3 = 5");
        assert!(i["tool_ms"].as_f64().unwrap() > 0.0);
        assert!(i["tool_error"].is_null());
    }
    let stats = &doc["summary"]["tool_ms"];
    assert_eq!(stats["count"], 10);
    assert!(stats["min"].as_f64().unwrap() <= stats["median"].as_f64().unwrap());
    assert_clean(&doc);
}

#[test]
fn failed_or_wrong_tool_results_count_against_the_verdict() {
    let _slot = shared_slot();
    for (call, expect, needle) in [
        ("error_test", None, "tool reported an error"),
        (
            r#"echo:{"message":"hi"}"#,
            Some("Echo: bye"),
            "wrong result",
        ),
        ("no_such_tool", None, "has no tool \"no_such_tool\""),
        (r#"no_such_tool:{}"#, None, "-32602"),
    ] {
        let dir = TempDir::new("toolfail");
        let mut cmd = ukload(dir.path());
        cmd.args(run_args(dir.path(), 2))
            .args(["--tool-call", call, "--max-boot-ms", "60000"]);
        if let Some(e) = expect {
            cmd.args(["--tool-expect", e]);
        }
        let out = output_within(cmd, RUN_DEADLINE);
        let doc = json_of(&out);
        // Everything booted and nothing was left: PARTIAL, not PASS.
        assert_eq!(out.status.code(), Some(2), "{call}: {doc:#}");
        assert_eq!(doc["verdict"], "PARTIAL");
        for i in instances(&doc) {
            let e = i["tool_error"]
                .as_str()
                .unwrap_or_else(|| panic!("{call}: no tool_error in {i:#}"));
            assert!(e.contains(needle), "{call}: {e}");
        }
        assert_eq!(doc["summary"]["tool_failed"].as_array().unwrap().len(), 2);
        assert_clean(&doc);
    }
}

#[test]
fn tool_call_without_arguments_fills_the_required_ones_from_the_schema() {
    let _slot = shared_slot();
    let dir = TempDir::new("toolsample");
    let (out, doc) = run_report(
        dir.path(),
        3,
        &[
            "--tool-call",
            "echo",
            "--max-boot-ms",
            "60000",
            "--max-tool-ms",
            "10000",
        ],
        RUN_DEADLINE,
    );
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    for i in instances(&doc) {
        assert_eq!(i["tool_result"], "Echo: ukload");
    }
    assert_clean(&doc);
}

/// The guide's phase 1 "tracks spawn commands and PIDs": each instance's
/// launch command is in the JSON report, the human report and the first
/// line of its log.
#[test]
fn launch_commands_are_in_the_report_the_json_and_the_log() {
    let _slot = shared_slot();
    let dir = TempDir::new("cmdline");
    let range = cid_block(10);
    let (out, doc) = run_report(
        dir.path(),
        2,
        &["--cid-range", &range, "--max-boot-ms", "60000"],
        RUN_DEADLINE,
    );
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    for i in instances(&doc) {
        let cmd = i["command"].as_str().expect("command in JSON");
        assert!(
            cmd.contains("ukload-guest") && cmd.contains(&format!("--cid {}", i["cid"])),
            "{cmd}"
        );
        let log = std::fs::read_to_string(i["log"].as_str().unwrap()).unwrap();
        assert_eq!(
            log.lines().next().unwrap(),
            format!("# ukload: launch: {cmd}")
        );
    }
    let mut human = ukload(dir.path());
    human
        .args(["run", "1", "-q", "--cid-range", &range, "--log-dir"])
        .arg(dir.path().join("logs"));
    let out = output_within(human, RUN_DEADLINE);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("$ ") && l.contains("ukload-guest")),
        "{text}"
    );
}

/// The guide's kraft flow with the project's own executor: the image is
/// `ukload-guest` itself, its arguments go after the image and `--` (as
/// `kraft run [FLAGS] IMAGE -- [APP ARGS]`), and readiness is its console
/// line through kraft's log.
#[test]
fn kraft_passes_application_arguments_to_the_executor_after_the_image() {
    let _slot = shared_slot();
    let dir = TempDir::new("kraftapp");
    let range = cid_block(10);
    let mut cmd = ukload(dir.path());
    cmd.args(run_args(dir.path(), 2))
        .args(["--launcher", "kraft", "--kraft-bin"])
        .arg(kraft_standin())
        .arg("--image")
        .arg(guest_bin())
        .args([
            "--app-arg=--listen",
            "--app-arg=uds:{uds}",
            "--app-arg=--boot-delay-ms",
            "--app-arg=20",
            "--cid-range",
            &range,
            "--max-boot-ms",
            "60000",
        ]);
    let out = output_within(cmd, RUN_DEADLINE);
    let doc = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    for i in instances(&doc) {
        let c = i["command"].as_str().unwrap();
        let after = c
            .split(" -- ")
            .nth(1)
            .unwrap_or_else(|| panic!("no -- in {c}"));
        assert!(
            after.starts_with("--listen uds:") && after.contains("--boot-delay-ms 20"),
            "{c}"
        );
        assert_eq!(i["reported_cid"], i["cid"], "{i:#}");
    }
    assert_clean(&doc);
}

/// The executor started with no arguments at all (a unikernel whose image
/// was run without app args) serves on vsock port 5252 instead of refusing.
#[test]
fn the_executor_without_arguments_does_not_refuse_to_start() {
    let mut child = std::process::Command::new(guest_bin())
        .env_remove("UKLOAD_RUN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    match child.try_wait().unwrap() {
        // Listening on vsock: it is serving; end it.
        None => {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A host without vsock may refuse the bind, but not the command line.
        Some(st) => {
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_ne!(st.code(), Some(64), "{err}");
            assert!(!err.contains("Required options"), "{err}");
        }
    }
}

/// The guide's "vsock connection < 10 ms": every instance's boot-probe
/// connection (connect + hybrid handshake) is measured, and with
/// `--max-connect-ms` checked.
#[test]
fn vsock_connection_latency_is_reported_and_checked_against_its_target() {
    let _slot = shared_slot();
    let dir = TempDir::new("connect");
    let range = cid_block(10);
    let (out, doc) = run_report(
        dir.path(),
        3,
        &[
            "--cid-range",
            &range,
            "--max-boot-ms",
            "60000",
            "--max-connect-ms",
            "10000",
        ],
        RUN_DEADLINE,
    );
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    for i in instances(&doc) {
        let c = i["connect_ms"].as_f64().expect("connect_ms");
        assert!(c > 0.0 && c <= i["boot_ms"].as_f64().unwrap(), "{i:#}");
    }
    assert_eq!(doc["summary"]["connect_ms"]["count"], 3);
    // An impossible target: every connection misses it, the run is PARTIAL.
    let (out, doc) = run_report(
        dir.path(),
        2,
        &[
            "--cid-range",
            &range,
            "--max-boot-ms",
            "60000",
            "--max-connect-ms",
            "0.000001",
        ],
        RUN_DEADLINE,
    );
    assert_eq!(out.status.code(), Some(2), "{doc:#}");
    assert!(doc["summary"]["reasons"]
        .to_string()
        .contains("2 vsock connection(s) slower than"));
}
