//! `--memory` for the qemu launcher: below the guest's
//! floor QEMU exits 0 with an empty console, which used to read as a
//! mysterious "exit code 0". Too little memory is now a usage error naming
//! the minimum, and a VM that exits 0 without booting is a failed boot that
//! points at its log.
//!
//! The boots need `bash scripts/setup-microvm.sh && bash scripts/build-guest-image.sh`
//! (or `UKLOAD_CACHE_DIR` naming a complete cache); without them they say why
//! and skip. The usage checks run everywhere.

#[macro_use]
mod common;

use common::*;
use std::time::Duration;

const RUN_DEADLINE: Duration = Duration::from_secs(120);
/// TCG boots take seconds on a loaded machine: the boot target is not under test.
const TCG_BOOT_MS: &str = "60000";

fn qemu_run(dir: &std::path::Path, extra: &[&str]) -> (std::process::Output, serde_json::Value) {
    let range = cid_block(10);
    let mut args = vec![
        "--launcher",
        "qemu",
        "--cid-range",
        &range,
        "--max-boot-ms",
        TCG_BOOT_MS,
        "--max-mem-mb",
        "1000",
    ];
    args.extend_from_slice(extra);
    run_report(dir, 1, &args, RUN_DEADLINE)
}

fn assert_no_vm_left(doc: &serde_json::Value) {
    let id = doc["run_id"].as_str().unwrap();
    assert_run_gone(id, Duration::from_secs(3));
}

#[test]
fn too_little_memory_for_a_microvm_is_a_usage_error_naming_the_minimum() {
    let dir = TempDir::new("qmem-usage");
    let min = ukload::launcher::qemu::MIN_QEMU_MEMORY_MB;
    for m in ["1", "20", &(min - 1).to_string()] {
        let mut cmd = ukload(dir.path());
        cmd.args(["run", "1", "--launcher", "qemu", "--memory", m])
            .arg("--log-dir")
            .arg(dir.path().join("logs"));
        let out = output_within(cmd, Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "--memory {m}: {err}");
        assert_eq!(err.lines().count(), 1, "--memory {m}: {err}");
        assert!(
            err.contains("--memory") && err.contains(&format!("at least {min} MiB")),
            "--memory {m}: {err}"
        );
        assert!(!dir.path().join("logs").exists(), "started something");
    }
    // Other launchers have no such floor (kraft and exec guests vary).
    let mut cmd = ukload(dir.path());
    cmd.args(["run", "1", "--launcher", "exec", "--exec", "true"])
        .args(["--memory", "20", "--cid-range", &cid_block(10), "-q"])
        .args(["--boot-timeout", "2", "--ready", "console"])
        .arg("--log-dir")
        .arg(dir.path().join("exec-logs"));
    let out = output_within(cmd, Duration::from_secs(30));
    assert_ne!(
        out.status.code(),
        Some(64),
        "exec launcher refused --memory 20"
    );
}

#[test]
fn a_microvm_boots_and_runs_a_tool_at_the_minimum_memory() {
    need_microvm!();
    let _g = vm_lock();
    let dir = TempDir::new("qmem-min");
    let min = ukload::launcher::qemu::MIN_QEMU_MEMORY_MB.to_string();
    let (out, doc) = qemu_run(
        dir.path(),
        &[
            "--memory",
            &min,
            "--tool-call",
            r#"echo:{"message":"floor"}"#,
            "--tool-expect",
            "floor",
            // Only the memory floor is under test: no latency target (TCG
            // on a shared 2-core machine takes 10-60 ms per call).
            "--max-tool-ms",
            "60000",
        ],
    );
    assert_no_vm_left(&doc);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{doc:#}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(doc["verdict"], "PASS");
}

#[test]
fn a_microvm_whose_qemu_exits_0_without_booting_is_a_failed_boot_naming_its_log() {
    need_microvm!();
    let _g = vm_lock();
    let dir = TempDir::new("qmem-exit0");
    // No init to run: the kernel panics, `panic=-1` resets the guest and
    // `-no-reboot` makes QEMU exit 0, as it does when memory is too small.
    let (out, doc) = qemu_run(dir.path(), &["--kernel-arg", "rdinit=/no-such-init"]);
    assert_no_vm_left(&doc);
    assert_eq!(out.status.code(), Some(1), "{doc:#}");
    assert_eq!(doc["verdict"], "FAIL");
    let inst = &instances(&doc)[0];
    assert!(inst["boot_ms"].is_null(), "{inst:#}");
    let err = inst["boot_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("exit code 0") && err.contains(inst["log"].as_str().unwrap()),
        "boot error should give QEMU's exit and the log: {err}"
    );
}
