//! `ukload doctor`: each need reported ok or missing with its fix, and the
//! exit code decided by the launcher asked about.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn doctor(args: &[&str], path: Option<&str>) -> (Option<i32>, String) {
    let dir = TempDir::new("doctor");
    let mut cmd = ukload(dir.path());
    // An empty image cache: no KVM probe (a VM boot of up to 20 s) here.
    cmd.arg("doctor")
        .args(args)
        .env("UKLOAD_CACHE_DIR", dir.path().join("cache"));
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let out = output_within(cmd, Duration::from_secs(60));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_process_launcher_has_what_it_needs_here() {
    let (code, text) = doctor(&[], None);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("ok      ukload-guest"), "{text}");
    assert!(text.contains("open files for 15 instances"), "{text}");
    assert!(text.contains("everything the process launcher needs is here"));
}

#[test]
fn a_launcher_missing_its_program_is_named_with_its_fix_and_exit_69() {
    // No kraft anywhere on this PATH.
    let (code, text) = doctor(&["--launcher", "kraft"], Some("/usr/bin:/bin"));
    assert_eq!(code, Some(69), "{text}");
    assert!(text.contains("MISSING kraft >= 0.11.6"), "{text}");
    assert!(
        text.contains("fix: curl -sSf https://get.kraftkit.sh"),
        "{text}"
    );
    assert!(
        text.contains("the kraft launcher cannot run: missing kraft"),
        "{text}"
    );
}

#[test]
fn an_open_file_limit_too_low_for_the_count_is_missing() {
    let dir = TempDir::new("doctor-nofile");
    let script = format!(
        "ulimit -n 256 && exec {} doctor --count 1000",
        ukload_bin().display()
    );
    let mut c = Command::new("bash");
    c.args(["-c", &script])
        .env("UKLOAD_RUNTIME_DIR", dir.path().join("rt"))
        .env("UKLOAD_CACHE_DIR", dir.path().join("cache"))
        .stdin(std::process::Stdio::null());
    let out = output_within(c, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(69), "{text}");
    assert!(
        text.contains("MISSING open files for 1000 instances"),
        "{text}"
    );
    assert!(text.contains("hard 256"), "{text}");
}

#[test]
fn a_bad_launcher_is_a_usage_error() {
    let (code, _) = doctor(&["--launcher", "firecracker"], None);
    assert_eq!(code, Some(64));
}

#[test]
fn tool_versions_are_the_first_line_of_their_version_output() {
    // Stand-ins answering `--version` (stderr chatter and a non-zero exit
    // included): the first stdout line decides.
    let bin = TempDir::new("doctor-versions");
    let script = |name: &str, body: &str| {
        use std::os::unix::fs::PermissionsExt;
        let p = bin.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    script(
        "node",
        "[ \"$1\" = --version ] || exit 2; echo noise >&2; echo v21.4.0; echo second line",
    );
    script("kraft", "echo 'kraft version 0.11.5 (old)'; exit 3");
    let path = format!("{}:/usr/bin:/bin", bin.path().display());
    let (code, text) = doctor(&["--launcher", "kraft"], Some(&path));
    assert_eq!(code, Some(69), "{text}");
    let line = |what: &str| {
        text.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what} line in {text}"))
            .to_string()
    };
    let node = line("node >= 18");
    assert!(node.contains("ok") && node.ends_with("v21.4.0"), "{node}");
    let kraft = line("kraft >= 0.11.6");
    assert!(
        kraft.contains("MISSING") && kraft.ends_with("kraft version 0.11.5 (old)"),
        "{kraft}"
    );
}
