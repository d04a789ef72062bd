//! Bad command lines for `ukload run`: every flag given a wrong value gives
//! ONE line naming the flag on stderr, exit 64, and starts nothing (no log
//! directory, no run directory, no process carrying a marker). Extends the
//! first version in tests/run_tests.rs.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

/// Live processes whose environment names `rt` as their runtime directory
/// (anything a `ukload` run in `rt` started would).
fn started_in(rt: &Path) -> Vec<i32> {
    let want = format!("UKLOAD_RUNTIME_DIR={}", rt.display());
    marked_pids(&|_| true)
        .into_iter()
        .filter(|(pid, _)| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|e| e.split(|&b| b == 0).any(|kv| kv == want.as_bytes()))
                .unwrap_or(false)
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Runs `ukload run <args>` and checks the usage-error contract.
fn assert_usage_error(dir: &Path, n: usize, args: &[&str], needle: &str, own_log_dir: bool) {
    let logs = dir.join(format!("logs-{n}"));
    let mut cmd = ukload(dir);
    cmd.arg("run").args(args);
    if !own_log_dir {
        cmd.arg("--log-dir").arg(&logs);
    }
    let out = output_within(cmd, LIMIT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err:?}");
    assert!(
        err.contains(needle),
        "{args:?}: message should name {needle}: {err}"
    );
    assert!(out.stdout.is_empty(), "{args:?}: printed a report");
    assert!(!logs.exists(), "{args:?}: log dir created");
    let runs = dir.join("rt").join("runs");
    let run_dirs = std::fs::read_dir(&runs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(run_dirs, 0, "{args:?}: a run directory was created");
    let started = started_in(&dir.join("rt"));
    assert!(started.is_empty(), "{args:?}: started {started:?}");
}

#[test]
fn every_bad_flag_value_is_one_line_naming_the_flag_exit_64() {
    let _slot = shared_slot();
    let dir = TempDir::new("usage2");
    let cases: &[(&[&str], &str)] = &[
        // COUNT
        (&["0"], "COUNT"),
        (&["x"], "COUNT"),
        (&["4294967296"], "COUNT"),
        (&["200", "--cid-range", "200-209"], "--cid-range"),
        // CID range: reversed, reserved CIDs, VMADDR_CID_ANY, garbage
        (&["2", "--cid-range", "299-200"], "--cid-range"),
        (&["2", "--cid-range", "0-5"], "--cid-range"),
        (&["2", "--cid-range", "2-5"], "--cid-range"),
        (&["2", "--cid-range", "3-4294967295"], "--cid-range"),
        (&["2", "--cid-range", "200-"], "--cid-range"),
        (&["2", "--cid-range", "a-b"], "--cid-range"),
        // launcher, framing, readiness, metric, format
        (&["2", "--launcher", "vmware"], "--launcher"),
        (&["2", "--framing", "json"], "--framing"),
        (&["2", "--ready", "soon"], "--ready"),
        (&["2", "--mem-metric", "vss"], "--mem-metric"),
        (&["2", "--format", "xml"], "--format"),
        (&["2", "--ready-console", "("], "--ready-console"),
        // numbers
        (&["2", "--port", "0"], "--port"),
        (&["2", "--port", "4294967295"], "--port"),
        (&["2", "--port", "http"], "--port"),
        (&["2", "--concurrency", "0"], "--concurrency"),
        (&["2", "--concurrency", "many"], "--concurrency"),
        (&["2", "--boot-timeout", "0"], "--boot-timeout"),
        (&["2", "--boot-timeout", "-1"], "--boot-timeout"),
        (&["2", "--boot-timeout", "nan"], "--boot-timeout"),
        (&["2", "--boot-timeout", "inf"], "--boot-timeout"),
        (&["2", "--max-boot-ms", "0"], "--max-boot-ms"),
        (&["2", "--max-boot-ms", "fast"], "--max-boot-ms"),
        (&["2", "--max-mem-mb", "-80"], "--max-mem-mb"),
        (&["2", "--max-mem-mb", "NaN"], "--max-mem-mb"),
        (&["2", "--grace-ms", "-1"], "--grace-ms"),
        (&["2", "--grace-ms", "2s"], "--grace-ms"),
        (&["2", "--min-success", "101"], "--min-success"),
        (&["2", "--min-success", "-5"], "--min-success"),
        (&["2", "--min-success", "most"], "--min-success"),
        (
            &["2", "--guest-boot-delay-ms", "-3"],
            "--guest-boot-delay-ms",
        ),
        (&["2", "--memory", "0"], "--memory"),
        (&["2", "--memory", "lots"], "--memory"),
        // exec launcher
        (&["1", "--launcher", "exec"], "--exec"),
        (&["1", "--launcher", "exec", "--exec", " "], "--exec"),
        (
            &["1", "--launcher", "exec", "--exec", "x {bogus}"],
            "{bogus}",
        ),
    ];
    for (n, (args, needle)) in cases.iter().enumerate() {
        assert_usage_error(dir.path(), n, args, needle, false);
    }
}

#[test]
fn missing_image_and_unusable_log_dirs_are_usage_errors() {
    let _slot = shared_slot();
    let dir = TempDir::new("usage3");
    let kraft = kraft_standin();
    let kraft = kraft.to_str().unwrap();
    // Missing kraft image.
    assert_usage_error(
        dir.path(),
        100,
        &[
            "1",
            "--launcher",
            "kraft",
            "--kraft-bin",
            kraft,
            "--image",
            "/nonexistent/unikraft_tool_executor",
        ],
        "--image",
        false,
    );
    // A log dir that cannot be created (a file is in the way)...
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let in_file = file.join("logs");
    assert_usage_error(
        dir.path(),
        101,
        &["1", "--log-dir", in_file.to_str().unwrap()],
        "--log-dir",
        true,
    );
    assert_usage_error(
        dir.path(),
        102,
        &["1", "--log-dir", file.to_str().unwrap()],
        "--log-dir",
        true,
    );
    // ...or exists but cannot be written (procfs refuses new files, even to root).
    assert_usage_error(
        dir.path(),
        103,
        &["1", "--log-dir", "/proc"],
        "--log-dir",
        true,
    );
    assert_usage_error(dir.path(), 104, &["1", "--log-dir", ""], "--log-dir", true);
}

/// `--boot-timeout 1e20` once panicked (`Duration::from_secs_f64`
/// overflows) and exited 101 with a backtrace: it is a usage error naming
/// the flag.
#[test]
fn absurdly_large_boot_timeout_is_a_usage_error() {
    let _slot = shared_slot();
    let dir = TempDir::new("usage4");
    assert_usage_error(
        dir.path(),
        200,
        &["1", "--boot-timeout", "1e20"],
        "--boot-timeout",
        false,
    );
}

#[test]
fn unknown_flags_and_missing_values_name_the_flag_and_exit_64() {
    let _slot = shared_slot();
    let dir = TempDir::new("usage5");
    // argh's own errors come with a second line pointing at `--help`.
    for (args, needle) in [
        (vec!["run", "--no-such-flag"], "--no-such-flag"),
        (vec!["run", "2", "--port"], "--port"),
        (vec!["run", "-1"], "-1"),
        (vec!["frobnicate"], "frobnicate"),
    ] {
        let mut cmd = ukload(dir.path());
        cmd.args(&args);
        let out = output_within(cmd, LIMIT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(err.lines().count() <= 2, "{args:?}: {err}");
    }
}

/// Durations beyond a day: `--boot-timeout 1e19` used to
/// pass parsing and panic in every worker thread (`Instant + Duration`
/// overflow), exit 101. Now every duration flag is bounded at parse time,
/// and the message names the bound.
#[test]
fn durations_beyond_a_day_are_usage_errors_naming_the_bound() {
    let _slot = shared_slot();
    let dir = TempDir::new("usage6");
    let cases: &[(&[&str], &str)] = &[
        (&["1", "--boot-timeout", "1e19"], "--boot-timeout"),
        (&["1", "--boot-timeout", "86400.5"], "--boot-timeout"),
        (&["1", "--grace-ms", "18446744073709551615"], "--grace-ms"),
        (&["1", "--grace-ms", "86400001"], "--grace-ms"),
        (
            &["1", "--tool-call", "echo", "--tool-timeout-ms", "1e3"],
            "--tool-timeout-ms",
        ),
        (
            &["1", "--tool-call", "echo", "--tool-timeout-ms", "86400001"],
            "--tool-timeout-ms",
        ),
        // Checked even when there is no tool call to use it.
        (&["1", "--tool-timeout-ms", "86400001"], "--tool-timeout-ms"),
        (
            &["1", "--guest-boot-delay-ms", "18446744073709551615"],
            "--guest-boot-delay-ms",
        ),
    ];
    for (n, (args, needle)) in cases.iter().enumerate() {
        assert_usage_error(dir.path(), 300 + n, args, needle, false);
    }
    for args in [
        &["run", "1", "--boot-timeout", "1e19"][..],
        &["cycles", "--boot-timeout", "1e19"][..],
        &["cycles", "--grace-ms", "99999999999"][..],
        &["cleanup", "--grace-ms", "99999999999"][..],
    ] {
        let mut cmd = ukload(dir.path());
        cmd.args(args);
        if args[0] != "cleanup" {
            cmd.arg("--log-dir").arg(dir.path().join("logs"));
        }
        let out = output_within(cmd, LIMIT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains("at most"), "{args:?}: no bound named: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// The longest accepted durations run normally: no overflow anywhere in the
/// run (deadlines, grace, tool deadline), PASS, nothing left.
#[test]
fn the_longest_accepted_durations_run_without_overflow() {
    let _slot = shared_slot();
    let dir = TempDir::new("usage7");
    let (out, doc) = run_report(
        dir.path(),
        1,
        &[
            "--cid-range",
            "7440-7444",
            "--boot-timeout",
            "86400",
            "--grace-ms",
            "86400000",
            "--tool-timeout-ms",
            "86400000",
            "--max-boot-ms",
            "60000",
        ],
        Duration::from_secs(120),
    );
    let id = doc["run_id"].as_str().unwrap().to_string();
    assert_run_gone(&id, Duration::from_secs(2));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(doc["verdict"], "PASS");
}

/// `--launcher` lists every launcher, qemu included, in `--help` of `run` and
/// `cycles` and in the man page.
#[test]
fn help_and_man_page_name_every_launcher() {
    let dir = TempDir::new("usage8");
    for sub in ["run", "cycles"] {
        let mut cmd = ukload(dir.path());
        cmd.args([sub, "--help"]);
        let out = output_within(cmd, LIMIT);
        assert_eq!(out.status.code(), Some(0));
        let help = String::from_utf8_lossy(&out.stdout);
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with("--launcher"))
            .unwrap_or_else(|| panic!("{sub} --help has no --launcher: {help}"));
        for l in ["process", "qemu", "kraft", "exec"] {
            assert!(line.contains(l), "{sub} --help: {line}");
        }
    }
    let man =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/ukload.1")).unwrap();
    let entry = man
        .lines()
        .find(|l| l.starts_with(".BI \\-\\-launcher"))
        .expect("man page has a --launcher entry");
    for l in ["process", "qemu", "kraft", "exec"] {
        assert!(entry.contains(l), "man page: {entry}");
    }
}

/// More instances than the hard open-files limit allows: refused before
/// anything starts, naming the limit and what to do (exit 64).
#[test]
fn too_many_instances_for_the_open_files_limit_are_refused_up_front() {
    let dir = common::TempDir::new("nofile");
    let script = format!(
        "ulimit -n 128 && exec {} run 50 --cid-range 7500-7549 -q --log-dir {}",
        common::ukload_bin().display(),
        dir.path().join("logs").display()
    );
    let mut c = std::process::Command::new("bash");
    c.args(["-c", &script])
        .env("UKLOAD_RUNTIME_DIR", dir.path().join("rt"))
        .env_remove("UKLOAD_RUN")
        .stdin(std::process::Stdio::null());
    let out = common::output_within(c, std::time::Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("open files") && err.contains("128"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn both_binaries_print_their_version_and_exit_0() {
    let want = env!("CARGO_PKG_VERSION");
    for (bin, args) in [
        (env!("CARGO_BIN_EXE_ukload"), &["--version"][..]),
        (env!("CARGO_BIN_EXE_ukload"), &["-V"][..]),
        (env!("CARGO_BIN_EXE_ukload-guest"), &["--version"][..]),
    ] {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let name = Path::new(bin).file_name().unwrap().to_string_lossy();
        assert_eq!(out.status.code(), Some(0), "{bin} {args:?}");
        assert_eq!(text.trim(), format!("{name} {want}"), "{bin} {args:?}");
    }
    // No command at all is a usage error, not a silent success.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ukload"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no command given"));
}

/// `--flag` names of `ukload ARGS --help`.
fn help_flags(args: &[&str]) -> std::collections::BTreeSet<String> {
    common::help_flags(&ukload_bin(), args)
}

/// `cycles` takes every flag of `run` that says how instances are started,
/// watched and ended (one declaration, so none drifts), and a bad value or
/// a bad combination gets the same line from both.
#[test]
fn cycles_takes_the_instance_flags_of_run_with_the_same_checks() {
    let run_only = [
        "--concurrency",
        "--max-boot-ms",
        "--max-mem-mb",
        "--mem-metric",
        "--min-success",
        "--tool-call",
        "--tool-expect",
        "--max-tool-ms",
        "--max-connect-ms",
        "--tool-timeout-ms",
        "--junit",
        "--prom",
        "--html",
    ];
    let run = help_flags(&["run"]);
    let cycles = help_flags(&["cycles"]);
    assert!(run.len() > 30, "run --help lists its flags: {run:?}");
    let missing: Vec<&String> = run
        .iter()
        .filter(|f| !run_only.contains(&f.as_str()) && !cycles.contains(*f))
        .collect();
    assert!(missing.is_empty(), "cycles lacks {missing:?}");
    let dir = TempDir::new("usage9");
    for bad in [
        &["--port", "0"][..],
        &["--ready", "soon"],
        &["--machine", "q35"],
        &["--launcher", "qemu", "--memory", "8"],
        &["--rootfs", "/x.erofs"],
        &["-q", "--progress", "json"],
    ] {
        let line = |sub: &str| {
            let mut cmd = ukload(dir.path());
            cmd.arg(sub)
                .args(bad)
                .arg("--log-dir")
                .arg(dir.path().join("l"));
            let out = output_within(cmd, LIMIT);
            assert_eq!(out.status.code(), Some(64), "{sub} {bad:?}");
            String::from_utf8_lossy(&out.stderr).into_owned()
        };
        let (r, c) = (line("run"), line("cycles"));
        assert_eq!(r.lines().count(), 1, "{bad:?}: {r}");
        assert_eq!(r, c, "{bad:?}");
    }
}

/// The transport flags are declared once for `mcp tools`, `call` and
/// `bench`, the call flags once for `call` and `bench`.
#[test]
fn mcp_commands_share_transport_and_call_flags() {
    let transport = [
        "--stdio",
        "--vsock",
        "--uds",
        "--framing",
        "--protocol",
        "--timeout-ms",
    ];
    let call = [
        "--arg",
        "--args",
        "--progress-resets-timeout",
        "--max-total-ms",
    ];
    for sub in ["tools", "call", "bench"] {
        let flags = help_flags(&["mcp", sub]);
        for f in transport {
            assert!(flags.contains(f), "mcp {sub} lacks {f}: {flags:?}");
        }
        for f in call {
            assert_eq!(flags.contains(f), sub != "tools", "mcp {sub} {f}");
        }
    }
}

/// A misspelt `UKLOAD_CONTAINMENT` is a usage error naming the variable and
/// the choices (exit 64), and nothing starts.
#[test]
fn an_unknown_containment_mode_is_a_usage_error() {
    let dir = TempDir::new("usage10");
    let mut cmd = ukload(dir.path());
    cmd.args(["run", "1", "--log-dir"])
        .arg(dir.path().join("logs"))
        .env("UKLOAD_CONTAINMENT", "cgroups");
    let out = output_within(cmd, LIMIT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("UKLOAD_CONTAINMENT=\"cgroups\": expected auto, cgroup or marker"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    assert!(started_in(&dir.path().join("rt")).is_empty());
}
