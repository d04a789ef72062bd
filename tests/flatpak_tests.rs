//! Inside a Flatpak sandbox (`/.flatpak-info`, overridden here with
//! `UKLOAD_FLATPAK_INFO`), ukload refuses to start launchers in the sandbox
//! unless `--flatpak-host` sends them to the host through `flatpak-spawn
//! --host` (here a stand-in, `tests/fixtures/flatpak-spawn`).

mod common;

use common::*;
use std::time::Duration;

fn sandboxed(
    dir: &std::path::Path,
    extra: &[&str],
    path_prefix: Option<&std::path::Path>,
) -> std::process::Output {
    let info = dir.join("flatpak-info");
    std::fs::write(&info, "[Application]\nname=test\n").unwrap();
    let mut cmd = ukload(dir);
    cmd.args(run_args(dir, 2))
        .args(["--cid-range", &cid_block(10), "--max-boot-ms", "60000"])
        .args(extra)
        .env("UKLOAD_FLATPAK_INFO", &info);
    if let Some(p) = path_prefix {
        let path = format!(
            "{}:{}",
            p.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.env("PATH", path);
    }
    output_within(cmd, Duration::from_secs(60))
}

#[test]
fn inside_a_sandbox_ukload_refuses_naming_the_opt_in_flag() {
    let dir = TempDir::new("flatpak-refuse");
    let out = sandboxed(dir.path(), &[], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("Flatpak sandbox") && err.contains("--flatpak-host"),
        "{err}"
    );
}

#[test]
fn flatpak_host_runs_launchers_through_flatpak_spawn_with_their_markers() {
    let dir = TempDir::new("flatpak-host");
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let out = sandboxed(dir.path(), &["--flatpak-host"], Some(&fixtures));
    let doc = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    for i in instances(&doc) {
        // The markers crossed as --env=: the guest got its CID and ukload
        // found the whole tree by its marker.
        assert_eq!(i["reported_cid"], i["cid"]);
        assert_eq!(i["teardown"], "terminated");
    }
    let id = doc["run_id"].as_str().unwrap();
    assert!(wait_no_processes(id, Duration::from_secs(2)).is_empty());
}

#[test]
fn flatpak_host_without_flatpak_spawn_says_what_is_missing() {
    let dir = TempDir::new("flatpak-missing");
    let info = dir.path().join("flatpak-info");
    std::fs::write(&info, "").unwrap();
    let mut cmd = ukload(dir.path());
    cmd.args(run_args(dir.path(), 1))
        .args(["--flatpak-host", "--cid-range", &cid_block(10)])
        .env("UKLOAD_FLATPAK_INFO", &info)
        .env("PATH", "/usr/bin:/bin");
    let out = output_within(cmd, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(err.contains("flatpak-spawn"), "{err}");
}
