//! Real microVMs: QEMU (TCG here) + Debian kernel + ukload-guest as PID 1,
//! reached over virtio-vsock through vhost-device-vsock's hybrid socket.
//! Needs `bash scripts/setup-microvm.sh && bash scripts/build-guest-image.sh`
//! (scripts/test.sh runs both); without them each test says why and skips.

#[macro_use]
mod common;

use common::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const RUN_DEADLINE: Duration = Duration::from_secs(300);
/// Boot target that fits TCG on two cores (seconds, not milliseconds).
const TCG_BOOT_MS: &str = "120000";

fn qemu_run(dir: &std::path::Path, count: u32) -> std::process::Command {
    let mut cmd = ukload(dir);
    cmd.args(run_args(dir, count)).args([
        "--launcher",
        "qemu",
        "--max-boot-ms",
        TCG_BOOT_MS,
        "--max-mem-mb",
        "1000",
    ]);
    cmd
}

fn assert_no_vm_left(run_id: &str) {
    let left = wait_no_processes(run_id, Duration::from_secs(3));
    kill_run(run_id);
    assert!(
        left.is_empty(),
        "QEMU / vhost-device-vsock of run {run_id} left: {left:?}"
    );
}

#[test]
fn three_microvms_boot_answer_ping_over_virtio_vsock_and_leave_nothing() {
    need_microvm!();
    let _g = vm_lock();
    let dir = TempDir::new("vm3");
    let out = output_within(qemu_run(dir.path(), 3), RUN_DEADLINE);
    let doc = json_of(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{doc:#}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in instances(&doc) {
        // The guest read its CID from its own virtio-vsock device.
        assert_eq!(i["reported_cid"], i["cid"], "{i:#}");
        let boot = i["boot_ms"].as_f64().unwrap();
        let vmm = i["vmm_ms"].as_f64().expect("VMM share of the boot");
        let guest = i["guest_kernel_ms"]
            .as_f64()
            .expect("guest share of the boot");
        let probe = i["probe_overhead_ms"]
            .as_f64()
            .expect("probe share of the boot");
        assert!(guest > 0.0 && vmm >= 0.0 && probe >= 0.0, "{i:#}");
        assert!(
            (vmm + guest + probe - boot).abs() < 1.0 || vmm == 0.0,
            "breakdown adds up: {i:#}"
        );
        // QEMU and vhost-device-vsock, both measured.
        let pids = i["pids"].as_array().unwrap();
        assert_eq!(pids.len(), 2, "{i:#}");
        assert!(
            i["pss_kb"].as_u64().unwrap() > 20 * 1024,
            "a VM's PSS is tens of MB: {i:#}"
        );
        assert_eq!(i["teardown"], "terminated");
    }
    assert_no_vm_left(doc["run_id"].as_str().unwrap());
}

#[test]
fn mcp_tools_execute_inside_a_microvm_over_vsock() {
    need_microvm!();
    let _g = vm_lock();
    for (call, want) in [
        (r#"echo:{"message":"from the host"}"#, "Echo: from the host"),
        (r#"add:{"a":40,"b":2}"#, "40 + 2 = 42"),
    ] {
        let dir = TempDir::new("vmtool");
        let mut cmd = qemu_run(dir.path(), 1);
        cmd.args([
            "--tool-call",
            call,
            "--tool-expect",
            want,
            "--max-tool-ms",
            "60000",
            "--tool-timeout-ms",
            "30000",
        ]);
        let out = output_within(cmd, RUN_DEADLINE);
        let doc = json_of(&out);
        assert_eq!(out.status.code(), Some(0), "{doc:#}");
        let i = &instances(&doc)[0];
        assert_eq!(i["tool_result"], want);
        assert!(i["tool_ms"].as_f64().unwrap() > 0.0);
        assert_no_vm_left(doc["run_id"].as_str().unwrap());
    }
}

/// An initramfs like the real one but with a corrupt `vsock.ko`.
fn broken_initramfs(dir: &std::path::Path) -> PathBuf {
    use ukload::image::{CpioWriter, ImagePaths};
    let paths = ImagePaths::cached();
    let out = dir.join("broken.cpio");
    let mut w = CpioWriter::new(std::fs::File::create(&out).unwrap());
    w.dir("dev", 0o755).unwrap();
    w.char_device("dev/console", 0o600, 5, 1).unwrap();
    for d in ["proc", "sys", "lib", "lib/modules"] {
        w.dir(d, 0o755).unwrap();
    }
    w.dir("tmp", 0o1777).unwrap();
    for m in ukload::vmabi::MODULES {
        let data = if *m == "vsock" {
            b"this is not an ELF module".to_vec()
        } else {
            std::fs::read(paths.modules_dir.join(format!("{m}.ko"))).unwrap()
        };
        w.file(&format!("lib/modules/{m}.ko"), 0o644, &data)
            .unwrap();
    }
    w.file("init", 0o755, &std::fs::read(&paths.guest_bin).unwrap())
        .unwrap();
    w.finish().unwrap();
    out
}

#[test]
fn a_guest_whose_init_fails_fails_its_boot_with_the_console_tail_and_is_cleaned_up() {
    need_microvm!();
    let _g = vm_lock();
    let dir = TempDir::new("vmbroken");
    // A kernel with every driver built in (the minimal kernel) loads no
    // module, so a corrupt one cannot fail its init: a bad port does.
    let modules_dir = ukload::image::ImagePaths::cached().modules_dir;
    let builtin_only = !modules_dir.join("vsock.ko").exists();
    let mut cmd = qemu_run(dir.path(), 1);
    if builtin_only {
        cmd.args(["--kernel-arg", "ukload.port=notaport"]);
    } else {
        cmd.arg("--initrd").arg(broken_initramfs(dir.path()));
    }
    cmd.args(["--boot-timeout", "90"]);
    let culprit = if builtin_only { "ukload.port" } else { "vsock" };
    let t = Instant::now();
    let out = output_within(cmd, RUN_DEADLINE);
    let doc = json_of(&out);
    assert_eq!(out.status.code(), Some(1), "{doc:#}");
    let e = instances(&doc)[0]["boot_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(e.contains("launcher exited"), "QEMU powered off: {e}");
    assert!(
        e.contains(culprit),
        "the console tail names what failed ({culprit}): {e}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(80),
        "a dead VM must not wait for the boot timeout"
    );
    assert_no_vm_left(doc["run_id"].as_str().unwrap());
}

#[test]
fn sigkill_of_ukload_during_a_microvm_boot_leaves_no_qemu() {
    need_microvm!();
    let _g = vm_lock();
    let dir = TempDir::new("vmkill");
    let mut cmd = qemu_run(dir.path(), 2);
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let harness = child.id();
    let ours = move |v: &str| v.ends_with(&format!("-{harness}"));
    let end = Instant::now() + Duration::from_secs(30);
    // Both QEMUs (and their vhost-device-vsock) running.
    while marked_pids(&ours)
        .iter()
        .filter(|(_, c)| c.contains("qemu-system"))
        .count()
        < 2
        && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let running = marked_pids(&ours);
    assert!(
        running
            .iter()
            .filter(|(_, c)| c.contains("qemu-system"))
            .count()
            == 2,
        "{running:?}"
    );
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(harness as i32, libc::SIGKILL) };
    let _ = child.wait();
    let left = left_after_harness_death(&ours);
    assert!(left.is_empty(), "left after SIGKILL of ukload: {left:?}");
}

/// What of the harness's runs (by marker) is still alive 2.5 s after the
/// harness died; kills it (by pid) so a failing test leaves nothing.
fn left_after_harness_death(ours: &dyn Fn(&str) -> bool) -> Vec<(i32, String)> {
    let t = Instant::now();
    let mut left = marked_pids(ours);
    while !left.is_empty() && t.elapsed() < Duration::from_millis(2500) {
        std::thread::sleep(Duration::from_millis(20));
        left = marked_pids(ours);
    }
    for (pid, _) in &left {
        // SAFETY: by pid, processes carrying this test's run marker.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    left
}

/// A CI runner's timeout: `timeout -s KILL` kills its whole process group,
/// ukload included. The watchdog (in a session of its own) must still end
/// every QEMU and vhost-device-vsock within about two seconds.
#[test]
fn sigkill_of_the_jobs_process_group_during_microvm_boots_leaves_no_qemu() {
    need_microvm!();
    let _g = vm_lock();
    let dir = TempDir::new("vmgroupkill");
    let mut inner = qemu_run(dir.path(), 2);
    // Hold the run (VMs up) until the timeout strikes.
    inner.env("UKLOAD_TEST_PAUSE_PHASE", "memory:30000");
    let mut cmd = std::process::Command::new("timeout");
    cmd.args(["-s", "KILL", "4"])
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let timeout_pid = child.id();
    // ukload is timeout's child: its run ids end in ukload's pid, which we
    // learn from the QEMUs' markers (the only runs whose harness is a child
    // of this `timeout`).
    let ukload_pid = || -> Option<u32> {
        let text =
            std::fs::read_to_string(format!("/proc/{timeout_pid}/task/{timeout_pid}/children"))
                .ok()?;
        text.split_whitespace().next()?.parse().ok()
    };
    let end = Instant::now() + Duration::from_secs(30);
    let mut harness = None;
    while harness.is_none() && Instant::now() < end {
        harness = ukload_pid();
        std::thread::sleep(Duration::from_millis(10));
    }
    let harness = harness.expect("ukload started under timeout");
    let ours = move |v: &str| v.ends_with(&format!("-{harness}"));
    while marked_pids(&ours)
        .iter()
        .filter(|(_, c)| c.contains("qemu-system"))
        .count()
        < 2
        && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        marked_pids(&ours)
            .iter()
            .filter(|(_, c)| c.contains("qemu-system"))
            .count(),
        2,
        "both QEMUs were running before the timeout"
    );
    let st = child.wait().unwrap();
    assert_eq!(st.code(), None, "timeout killed its group");
    let left = left_after_harness_death(&ours);
    assert!(left.is_empty(), "left after the group SIGKILL: {left:?}");
}

/// The vhost-user vsock backend dies during the boot: the instance fails at
/// once, naming the helper, instead of waiting for the boot deadline.
#[test]
fn a_dead_vsock_backend_fails_the_boot_at_once_naming_it() {
    need_microvm!();
    let _g = vm_lock();
    let dir = TempDir::new("vmhelper");
    let mut cmd = qemu_run(dir.path(), 1);
    cmd.args(["--boot-timeout", "120"]);
    let out_path = dir.path().join("report.json");
    let mut child = cmd
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let harness = child.id();
    let ours = move |v: &str| v.ends_with(&format!("-{harness}"));
    let end = Instant::now() + Duration::from_secs(30);
    // Once QEMU runs (connected to the backend), the backend dies.
    let backend = loop {
        let procs = marked_pids(&ours);
        let qemu = procs.iter().any(|(_, c)| c.contains("qemu-system"));
        let found = procs.iter().find(|(_, c)| c.contains("vhost-device-vsock"));
        if let (true, Some((pid, _))) = (qemu, found) {
            break *pid;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no vhost-device-vsock started");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let t = Instant::now();
    // SAFETY: by pid, the backend carrying this test's run marker.
    unsafe { libc::kill(backend, libc::SIGKILL) };
    let st = child.wait().unwrap();
    let took = t.elapsed();
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    let left = left_after_harness_death(&ours);
    assert!(left.is_empty(), "{left:?}");
    let i0 = &instances(&doc)[0];
    // QEMU had just started: the guest cannot have booted; the failure
    // names the helper, long before the 120 s deadline.
    assert!(i0["boot_ms"].is_null(), "{doc:#}");
    let err = i0["boot_error"].as_str().unwrap();
    assert!(
        err.contains("helper") && err.contains("vhost-device-vsock"),
        "{err}"
    );
    assert_eq!(st.code(), Some(1), "{doc:#}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    eprintln!("backend killed: {err} ({took:?})");
}

#[test]
fn missing_kernel_is_reported_with_the_command_that_builds_it() {
    let _g = vm_lock();
    let dir = TempDir::new("vmnokernel");
    let mut cmd = ukload(dir.path());
    cmd.args(run_args(dir.path(), 1)).args([
        "--launcher",
        "qemu",
        "--kernel",
        "/nonexistent/vmlinux",
        "--accel",
        "tcg",
    ]);
    let out = output_within(cmd, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    if ukload::launcher::qemu::find_program("qemu-system-x86_64").is_none() {
        assert_eq!(out.status.code(), Some(69), "{err}");
        assert!(err.contains("setup-microvm.sh"), "{err}");
        return;
    }
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(
        err.contains("/nonexistent/vmlinux") && err.contains("setup-microvm.sh"),
        "{err}"
    );
}
