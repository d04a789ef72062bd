//! Real MCP servers inside real microVMs: the Node echo server (and hostile
//! servers) run from a read-only erofs root filesystem image attached to QEMU
//! as virtio-blk; the guest's PID 1 mounts it and bridges every vsock
//! connection to the server, chrooted in the image.
//!
//! Needs QEMU, vhost-device-vsock, the guest image (kernel with virtio-blk and
//! erofs, initramfs), node and mkfs.erofs (scripts/test.sh installs them).
//! Without them each test says "skipped: ..." and passes, except under
//! `CI=true`, where a missing piece fails the test.

mod common;

use common::*;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const RUN_DEADLINE: Duration = Duration::from_secs(300);
/// Boot target that fits TCG on two cores (ms).
const TCG_BOOT_MS: &str = "60000";
/// Guest memory for a VM running Node (docs/microvm.md, "MCP servers in the VM").
const NODE_MEMORY_MB: &str = "160";
/// How long a test waits for the guest's ready line.
const READY_DEADLINE: Duration = Duration::from_secs(120);

/// Why these tests cannot run here, if they cannot: the microVM pieces,
/// and what a server in a VM needs besides.
fn missing() -> Option<String> {
    let mut why: Vec<String> = microvm_missing().into_iter().collect();
    if !node_available() {
        why.push("node (apt-get install nodejs)".into());
    }
    if ukload::paths::find_on_path("mkfs.erofs").is_none() {
        why.push("mkfs.erofs (apt-get install erofs-utils)".into());
    }
    let config = ukload::image::cache_dir().join("kernel-config");
    if !config.is_file() {
        why.push(
            "the minimal guest kernel (UKLOAD_KERNEL_FLAVOR=minimal scripts/setup-microvm.sh): \
             a Debian flavor does not load virtio_blk and erofs"
                .into(),
        );
    }
    if let Ok(cfg) = std::fs::read_to_string(&config) {
        for need in ["CONFIG_VIRTIO_BLK=y", "CONFIG_EROFS_FS=y", "CONFIG_TMPFS=y"] {
            if !cfg.lines().any(|l| l == need) {
                why.push(format!(
                    "a guest kernel with {need} (bash scripts/build-minimal-kernel.sh)"
                ));
            }
        }
    }
    (!why.is_empty()).then(|| why.join(", "))
}

macro_rules! need_vm_mcp {
    () => {
        if !prerequisite(missing().map(|why| format!("microVM MCP pieces missing: {why}"))) {
            return;
        }
    };
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp")
}

/// The hostile servers, put in the image at their host paths.
const HOSTILE: [&str; 3] = [
    "vm_crash_server.js",
    "vm_silent_server.js",
    "vm_flood_server.js",
];

/// `--include` values for the hostile servers.
fn hostile_includes() -> Vec<String> {
    HOSTILE
        .iter()
        .map(|f| fixtures().join(f).to_string_lossy().into_owned())
        .collect()
}

/// The echo server's command as given to `--mcp-server`.
fn echo_cmd() -> String {
    format!("node {}", echo_server().display())
}

/// A hostile server's command (node from the image, the script at its host path).
fn node_cmd(script: &str) -> String {
    format!("node {}", fixtures().join(script).display())
}

/// The root filesystem image `ukload run --mcp-server ECHO --include HOSTILE...`
/// builds: node, its libraries and loader, the echo server (the manifest's
/// command) and the hostile servers. Built once (then cached by content in
/// the image cache, where the runs below find the same image).
fn image() -> &'static Path {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        let spec = ukload::rootfs::RootfsSpec::parse(&echo_cmd(), &hostile_includes())
            .expect("rootfs spec");
        ukload::rootfs::build(&spec, &ukload::image::cache_dir())
            .expect("building the root filesystem image")
            .path
    })
}

/// `ukload run COUNT --launcher qemu --rootfs IMG --mcp-server CMD --tool-call CALL`
/// (with `rootfs` false: no --rootfs, the run builds the image itself).
fn vm_mcp_run(
    dir: &Path,
    count: u32,
    rootfs: bool,
    server: &str,
    call: &str,
    extra: &[&str],
) -> Command {
    let mut cmd = ukload(dir);
    cmd.args(run_args(dir, count))
        .args([
            "--launcher",
            "qemu",
            "--accel",
            "tcg",
            "--max-boot-ms",
            TCG_BOOT_MS,
            "--max-mem-mb",
            "1000",
            "--max-tool-ms",
            "60000",
            "--memory",
            NODE_MEMORY_MB,
        ])
        .args(["--mcp-server", server, "--tool-call", call])
        .args(extra);
    if rootfs {
        cmd.arg("--rootfs").arg(image());
    } else {
        for inc in hostile_includes() {
            cmd.args(["--include", &inc]);
        }
    }
    cmd
}

fn assert_nothing_left(run_id: &str) {
    assert_run_gone(run_id, Duration::from_secs(3));
}

#[test]
fn three_microvms_run_the_node_echo_server_and_answer_a_tool_call() {
    need_vm_mcp!();
    let _g = vm_lock();
    let dir = TempDir::new("vmmcp3");
    // No --rootfs: the run builds the image (or finds it in the cache).
    let cmd = vm_mcp_run(
        dir.path(),
        3,
        false,
        &echo_cmd(),
        r#"echo:{"message":"hi"}"#,
        &["--tool-expect", "Echo: hi", "--tool-timeout-ms", "60000"],
    );
    let out = output_within(cmd, RUN_DEADLINE);
    let doc = json_of(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{doc:#}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The report names the image every VM attached and the server it ran.
    assert!(
        doc["config"]["rootfs"]
            .as_str()
            .is_some_and(|p| p.ends_with(".erofs")),
        "{:#}",
        doc["config"]
    );
    assert!(
        doc["config"]["mcp_server"][1]
            .as_str()
            .is_some_and(|a| a.ends_with("echo_server.js")),
        "{:#}",
        doc["config"]
    );
    for i in instances(&doc) {
        assert_eq!(i["tool_result"], "Echo: hi", "{i:#}");
        assert!(i["server_start_ms"].as_f64().unwrap() > 0.0, "{i:#}");
        assert!(i["tool_ms"].as_f64().unwrap() > 0.0, "{i:#}");
        assert!(i["pss_kb"].as_u64().unwrap() > 20 * 1024, "{i:#}");
        // The console log shows the guest ran the bridged server from the image.
        let log = std::fs::read_to_string(i["log"].as_str().unwrap()).unwrap();
        let want = format!(
            "ukload-guest: init: MCP server: {}",
            ukload::rootfs::RootfsSpec::parse(&echo_cmd(), &[])
                .unwrap()
                .guest_command()
                .join(" ")
        );
        assert!(log.contains(&want), "{want} in {log}");
        assert!(log.contains("-drive file="), "{log}");
    }
    assert_nothing_left(doc["run_id"].as_str().unwrap());
}

/// The tool error of the only instance of a failed run.
fn failed_tool_error(out: &std::process::Output) -> (String, serde_json::Value) {
    let doc = json_of(out);
    assert_ne!(out.status.code(), Some(0), "{doc:#}");
    let i = &instances(&doc)[0];
    assert!(i["boot_ms"].as_f64().is_some(), "it booted: {i:#}");
    let err = i["tool_error"]
        .as_str()
        .unwrap_or_else(|| panic!("a tool error: {i:#}"))
        .to_string();
    (err, doc)
}

#[test]
fn a_server_that_crashes_on_start_is_named_with_its_status_and_stderr() {
    need_vm_mcp!();
    let _g = vm_lock();
    let dir = TempDir::new("vmmcpcrash");
    let started = Instant::now();
    let cmd = vm_mcp_run(
        dir.path(),
        1,
        true,
        &node_cmd("vm_crash_server.js"),
        r#"echo:{"message":"hi"}"#,
        &["--tool-timeout-ms", "30000"],
    );
    let out = output_within(cmd, RUN_DEADLINE);
    let (err, doc) = failed_tool_error(&out);
    assert!(
        err.contains("exited") && err.contains("exit status: 3"),
        "{err}"
    );
    assert!(err.contains("vm_crash_server: giving up at start"), "{err}");
    assert!(started.elapsed() < RUN_DEADLINE);
    assert_nothing_left(doc["run_id"].as_str().unwrap());
}

#[test]
fn a_server_that_never_answers_is_ended_by_the_guest_and_named() {
    need_vm_mcp!();
    let _g = vm_lock();
    let dir = TempDir::new("vmmcpsilent");
    let cmd = vm_mcp_run(
        dir.path(),
        1,
        true,
        &node_cmd("vm_silent_server.js"),
        r#"echo:{"message":"hi"}"#,
        // The guest gives the server this long after its first request.
        &["--tool-timeout-ms", "8000"],
    );
    let out = output_within(cmd, RUN_DEADLINE);
    let (err, doc) = failed_tool_error(&out);
    assert!(err.contains("never answered"), "{err}");
    assert_nothing_left(doc["run_id"].as_str().unwrap());
}

#[test]
fn a_server_that_floods_without_a_newline_is_ended_and_named() {
    need_vm_mcp!();
    let _g = vm_lock();
    let dir = TempDir::new("vmmcpflood");
    let cmd = vm_mcp_run(
        dir.path(),
        1,
        true,
        &node_cmd("vm_flood_server.js"),
        r#"echo:{"message":"hi"}"#,
        &["--tool-timeout-ms", "60000"],
    );
    let out = output_within(cmd, RUN_DEADLINE);
    let (err, doc) = failed_tool_error(&out);
    assert!(err.contains("without a newline"), "{err}");
    assert_nothing_left(doc["run_id"].as_str().unwrap());
}

#[test]
fn a_server_program_missing_from_the_image_is_named_and_the_guest_keeps_running() {
    need_vm_mcp!();
    let _g = vm_lock();
    let dir = TempDir::new("vmmcpnoprog");
    let cmd = vm_mcp_run(
        dir.path(),
        1,
        true,
        "/usr/bin/ukload-no-such-server /srv/x.js",
        r#"echo:{"message":"hi"}"#,
        &["--tool-timeout-ms", "30000"],
    );
    let out = output_within(cmd, RUN_DEADLINE);
    // It booted (PID 1 did not die starting the server ahead) and the call
    // says why nothing answers.
    let (err, doc) = failed_tool_error(&out);
    assert!(
        err.contains("no such program in the root filesystem image")
            && err.contains("/usr/bin/ukload-no-such-server"),
        "{err}"
    );
    assert_nothing_left(doc["run_id"].as_str().unwrap());
}

/// A VM started by the test itself from the launcher's own plan: its
/// processes are in process groups the test created and ends on drop.
struct TestVm {
    groups: Vec<std::process::Child>,
    endpoint: ukload::vsock::Endpoint,
    log: PathBuf,
}

impl Drop for TestVm {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        for c in self.groups.iter_mut().rev() {
            // The group this test created for `c` (its pgid is its pid, held
            // until `c` is reaped just below).
            let _ = killpg(nix::unistd::Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

fn to_std(cmd: &ukload::supervisor::Command, log: &Path) -> Command {
    let mut c = Command::new(cmd.program());
    c.args(cmd.arg_list())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .process_group(0);
    c
}

fn boot_vm(dir: &Path, server: Option<Vec<String>>) -> TestVm {
    use ukload::launcher::qemu::{Accel, QemuConfig, VsockBackend};
    let mut cfg = QemuConfig {
        accel: Accel::Tcg,
        backend: VsockBackend::VhostUser,
        rootfs: Some(image().to_path_buf()),
        server,
        ..Default::default()
    };
    let memory: u64 = NODE_MEMORY_MB.parse().unwrap();
    let r = cfg.preflight(memory, None).expect("preflight");
    let ctx = ukload::launcher::InstanceCtx {
        index: 0,
        // vhost-user: this VM's own vhost-device-vsock, so no other VM sees its CID.
        cid: 3,
        port: ukload::DEFAULT_PORT,
        uds: dir.join("vm.vsock"),
        memory_mb: memory,
        log: dir.join("console.log"),
    };
    let ready = regex_lite::Regex::new("ukload-guest: ready").unwrap();
    let plan = cfg.plan(&r, &ctx, &ready);
    let mut vm = TestVm {
        groups: Vec::new(),
        endpoint: ukload::vsock::Endpoint::Hybrid {
            path: ctx.uds.clone(),
            port: ctx.port,
        },
        log: ctx.log.clone(),
    };
    for pre in &plan.pre {
        vm.groups.push(
            to_std(&pre.command, &dir.join("helper.log"))
                .spawn()
                .unwrap(),
        );
        let t = Instant::now();
        while !pre.ready_path.exists() {
            assert!(t.elapsed() < Duration::from_secs(10), "helper socket");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    vm.groups
        .push(to_std(&plan.command, &ctx.log).spawn().unwrap());
    let t = Instant::now();
    loop {
        let log = std::fs::read_to_string(&ctx.log).unwrap_or_default();
        if log.contains("ukload-guest: ready") {
            break;
        }
        assert!(
            t.elapsed() < READY_DEADLINE,
            "no ready line within {READY_DEADLINE:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    vm
}

fn session(vm: &TestVm) -> ukload::mcp::Session {
    let stream = ukload::vsock::connect(&vm.endpoint, Duration::from_secs(10)).expect("connect");
    let t = ukload::mcp::Transport::vsock_stream(
        stream,
        ukload::framing::Framing::Line,
        vm.endpoint.to_string(),
    )
    .unwrap();
    let opts = ukload::mcp::SessionOptions {
        init_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(60),
        discover_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    ukload::mcp::Session::connect(t, opts).expect("MCP session with the server in the VM")
}

#[test]
fn the_node_echo_server_in_a_microvm_lists_and_runs_its_tools_over_vsock() {
    need_vm_mcp!();
    let _g = vm_lock();
    let dir = TempDir::new("vmmcpdirect");
    // No server on the command line: the image's manifest names it.
    let vm = boot_vm(dir.path(), None);
    let s = session(&vm);
    let names: Vec<String> = s
        .list_tools()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    for want in ["echo", "add", "error_test"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    let r = s
        .call_tool(
            "echo",
            serde_json::json!({"message": "vm"}),
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(r.text(), "Echo: vm");
    assert!(!r.is_error);
    let r = s
        .call_tool(
            "add",
            serde_json::json!({"a": 40, "b": 2}),
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(r.text().contains("42"), "{}", r.text());
    let r = s
        .call_tool("error_test", serde_json::json!({}), Duration::from_secs(60))
        .unwrap();
    assert!(r.is_error, "error_test reports a tool error: {}", r.text());
    let _ = s.close();
    // The bridge ends the server when the connection closes, and a second
    // connection gets a fresh one.
    let s2 = session(&vm);
    let r = s2
        .call_tool(
            "echo",
            serde_json::json!({"message": "again"}),
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(r.text(), "Echo: again");
    let _ = s2.close();
    let log = std::fs::read_to_string(&vm.log).unwrap();
    assert!(log.contains("MCP server: /"), "{log}");
}

/// `ukload run 1 ARGS...` isolated in `dir`; returns exit code and stderr.
fn run_flags(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = ukload(dir);
    cmd.args(run_args(dir, 1)).args(args);
    let out = output_within(cmd, Duration::from_secs(60));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn server_image_flags_that_do_not_fit_together_are_usage_errors_naming_them() {
    let dir = TempDir::new("vmmcpflags");
    let echo = echo_cmd();
    for (args, want) in [
        (
            vec!["--rootfs", "/x.erofs"],
            "--rootfs and --include are for --launcher qemu",
        ),
        (
            vec!["--launcher", "qemu", "--include", "/etc/hostname"],
            "--include needs --mcp-server",
        ),
        (
            vec![
                "--launcher",
                "qemu",
                "--mcp-server",
                &echo,
                "--rootfs",
                "/x.erofs",
                "--include",
                "/etc/hostname",
            ],
            "leave one of them out",
        ),
        (
            vec!["--launcher", "kraft", "--mcp-server", &echo],
            "--mcp-server works with --launcher process or qemu",
        ),
    ] {
        let (code, err) = run_flags(dir.path(), &args);
        assert_eq!(code, Some(64), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn a_server_whose_image_cannot_be_built_fails_the_run_before_any_vm_starts() {
    let dir = TempDir::new("vmmcpnoprog");
    let started = Instant::now();
    let (code, err) = run_flags(
        dir.path(),
        &[
            "--launcher",
            "qemu",
            "--mcp-server",
            "ukload-no-such-server-program --stdio",
        ],
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("building the root filesystem image")
            && err.contains("ukload-no-such-server-program"),
        "{err}"
    );
    // Nothing was started: no run directory holds an instance log.
    assert!(
        !dir.path().join("logs").exists()
            || std::fs::read_dir(dir.path().join("logs"))
                .unwrap()
                .next()
                .is_none()
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}
