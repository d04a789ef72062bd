//! What scripts, Makefiles and terminals get: `make` targets run the
//! README's commands, the benchmark honours `UKLOAD=`, and a terminal gets a
//! boot-time histogram line.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn root() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn make_targets_run_the_readme_commands() {
    if ukload::supervisor::spawn::resolve_program("make".as_ref()).is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but make is missing"
        );
        eprintln!("skipped: make not installed");
        return;
    }
    let dry = |args: &[&str]| {
        let out = Command::new("make")
            .arg("-n")
            .args(args)
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(dry(&["load-test", "N=7"]).contains("bash scripts/load-test-unikernels.sh 7"));
    assert!(dry(&["test"]).contains("bash scripts/test.sh"));
    assert!(dry(&["bench"]).contains("bash scripts/benchmark-unikernel-performance.sh"));
    assert!(dry(&["microvm", "N=3"]).contains("load-test-unikernels.sh 3 --launcher qemu"));
}

#[test]
fn the_benchmark_uses_the_ukload_it_is_given() {
    let dir = TempDir::new("bench-ukload");
    let out = Command::new("bash")
        .arg(root().join("scripts/benchmark-unikernel-performance.sh"))
        .args(["--scale", "--process", "3", "--vms", ""])
        .env("UKLOAD", ukload_bin())
        .env("UKLOAD_RUNTIME_DIR", dir.path().join("rt"))
        .env("TMPDIR", dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("process"))
        .unwrap_or_else(|| panic!("no row: {text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "3", "{row}");
    assert_eq!(cols.last(), Some(&"PASS"), "{row}");
    assert_eq!(cols[cols.len() - 2], "0", "nothing left: {row}");
}

#[test]
fn a_terminal_gets_a_boot_time_histogram_line() {
    if ukload::supervisor::spawn::resolve_program("script".as_ref()).is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but script(1) is missing"
        );
        eprintln!("skipped: script(1) not installed");
        return;
    }
    let dir = TempDir::new("tty");
    let range = cid_block(10);
    let cmdline = format!(
        "{} run 5 -q --cid-range {range} --log-dir {}",
        ukload_bin().display(),
        dir.path().join("logs").display()
    );
    let mut c = Command::new("script");
    c.args(["-qec", &cmdline, "/dev/null"])
        .env("UKLOAD_RUNTIME_DIR", dir.path().join("rt"))
        .env("TMPDIR", dir.path())
        .stdin(std::process::Stdio::null());
    let out = output_within(c, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains(" ms ") && l.chars().any(|c| ('▁'..='█').contains(&c))),
        "no histogram line on a terminal:\n{text}"
    );
    // And none in a pipe.
    let mut p = ukload(dir.path());
    p.args(["run", "2", "-q", "--cid-range", &range, "--log-dir"])
        .arg(dir.path().join("logs"));
    let out = output_within(p, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.chars().any(|c| ('▁'..='█').contains(&c)), "{text}");
}
