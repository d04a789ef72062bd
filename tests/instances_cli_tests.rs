//! `ukload ps` and `ukload cleanup` through the binary.

mod common;

use common::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

struct Reap(std::process::Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ps_lists_the_live_instances_of_a_running_run() {
    let dir = TempDir::new("ps");
    let mut cmd = ukload(dir.path());
    cmd.args(run_args(dir.path(), 3)).args([
        "--guest-boot-delay-ms",
        "3000",
        "--max-boot-ms",
        "60000",
    ]);
    let run = std::thread::spawn(move || output_within(cmd, Duration::from_secs(60)));
    let end = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let mut ps = ukload(dir.path());
        ps.args(["ps", "--format", "json"]);
        let out = output_within(ps, Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(0));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mine: Vec<serde_json::Value> = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["pids"].as_array().is_some_and(|p| !p.is_empty())
                    && r["cid"].as_u64().is_some_and(|c| (200..=299).contains(&c))
                    && r["harness_alive"] == true
            })
            .filter(|r| {
                // Only this test's run: its instances' sockets live in our dir.
                r["pids"].as_array().unwrap().iter().any(|p| {
                    std::fs::read(format!("/proc/{}/cmdline", p)).is_ok_and(|c| {
                        String::from_utf8_lossy(&c).contains(dir.path().to_str().unwrap())
                    })
                })
            })
            .cloned()
            .collect();
        if mine.len() == 3 || Instant::now() >= end {
            break mine;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(rows.len(), 3, "ps should list 3 live instances: {rows:#?}");
    let mut idx: Vec<u64> = rows
        .iter()
        .map(|r| r["instance"].as_u64().unwrap())
        .collect();
    idx.sort();
    assert_eq!(idx, vec![0, 1, 2]);
    let out = run.join().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let doc = json_of(&out);
    assert!(wait_no_processes(doc["run_id"].as_str().unwrap(), Duration::from_secs(2)).is_empty());
}

#[test]
fn cleanup_ends_marked_leftovers_of_a_dead_run_and_never_touches_unmarked_processes() {
    let dir = TempDir::new("cleanup");
    let run_id = format!("deadrun{}", std::process::id());
    let marked = Reap(
        std::process::Command::new("sh")
            .args(["-c", "sleep 60 & wait"])
            .env("UKLOAD_RUN", &run_id)
            .env("UKLOAD_INSTANCE", "0")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let unmarked = Reap(
        std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap(),
    );
    let end = Instant::now() + Duration::from_secs(5);
    while run_processes(&run_id).len() < 2 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        run_processes(&run_id).len(),
        2,
        "sh and its sleep carry the marker"
    );

    let mut c = ukload(dir.path());
    c.args(["cleanup", "--run", &run_id, "--grace-ms", "500"]);
    let out = output_within(c, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&run_id), "report names the run: {text}");
    assert!(wait_no_processes(&run_id, Duration::from_secs(2)).is_empty());
    let unmarked_pid = unmarked.0.id();
    let stat = std::fs::read_to_string(format!("/proc/{unmarked_pid}/stat"))
        .expect("unmarked process still exists");
    assert!(
        !stat.rsplit(')').next().unwrap().trim().starts_with('Z'),
        "unmarked process was killed"
    );
    drop(marked);
    drop(unmarked);
}

#[test]
fn cleanup_leaves_a_live_run_alone_unless_told() {
    let dir = TempDir::new("cleanlive");
    let mut cmd = ukload(dir.path());
    cmd.args(run_args(dir.path(), 2)).args([
        "--guest-boot-delay-ms",
        "2500",
        "--max-boot-ms",
        "60000",
    ]);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let harness = child.id();
    let ours = move |v: &str| v.ends_with(&format!("-{harness}"));
    let end = Instant::now() + Duration::from_secs(20);
    while marked_pids(&ours).len() < 2 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let run_id = {
        let env = std::fs::read(format!("/proc/{}/environ", marked_pids(&ours)[0].0)).unwrap();
        let kv = env
            .split(|&b| b == 0)
            .find(|kv| kv.starts_with(b"UKLOAD_RUN="))
            .unwrap();
        String::from_utf8_lossy(&kv[11..]).into_owned()
    };
    let mut c = ukload(dir.path());
    c.args(["cleanup", "--run", &run_id]);
    let out = output_within(c, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("harness is alive"), "{text}");
    assert_eq!(
        marked_pids(&ours).len(),
        2,
        "a live run's instances were touched"
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(wait_no_processes(&run_id, Duration::from_secs(2)).is_empty());
}

/// Starts `ukload run COUNT` in the background in `dir` with guests that
/// stay unready for `delay_ms`; returns the harness and its run id once
/// `count` guests carry the marker.
fn start_long_run(
    dir: &std::path::Path,
    count: u32,
    range: &str,
    delay_ms: &str,
) -> (Reap, String) {
    let mut cmd = ukload(dir);
    cmd.args(run_args(dir, count))
        .args(["--cid-range", range, "--guest-boot-delay-ms", delay_ms])
        .args(["--boot-timeout", "120", "--max-boot-ms", "60000"]);
    let child = Reap(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let harness = child.0.id();
    let ours = move |v: &str| v.ends_with(&format!("-{harness}"));
    let end = Instant::now() + Duration::from_secs(30);
    while marked_pids(&ours).len() < count as usize {
        assert!(Instant::now() < end, "the run's guests never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    let env = std::fs::read(format!("/proc/{}/environ", marked_pids(&ours)[0].0)).unwrap();
    let kv = env
        .split(|&b| b == 0)
        .find(|kv| kv.starts_with(b"UKLOAD_RUN="))
        .unwrap();
    (child, String::from_utf8_lossy(&kv[11..]).into_owned())
}

/// SIGTERM to the harness (by pid), then waits for it to exit and for its
/// run to have no process left.
fn end_run(mut harness: Reap, run_id: &str) {
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(harness.0.id() as i32, libc::SIGTERM) };
    let end = Instant::now() + Duration::from_secs(30);
    while harness.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "harness did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_run_gone(run_id, Duration::from_secs(3));
}

#[test]
fn deleting_a_live_runs_directory_does_not_make_it_dead_for_ps_or_cleanup() {
    let dir = TempDir::new("rundel");
    let (harness, run_id) = start_long_run(dir.path(), 2, &cid_block(10), "30000");
    std::fs::remove_dir_all(dir.path().join("rt/runs").join(&run_id)).unwrap();

    let mut ps = ukload(dir.path());
    ps.args(["ps", "--format", "json"]);
    let out = output_within(ps, Duration::from_secs(20));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows: Vec<&serde_json::Value> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["run_id"] == run_id.as_str())
        .collect();
    assert_eq!(rows.len(), 2, "{v:#}");
    assert!(
        rows.iter().all(|r| r["harness_alive"] == true),
        "a live run shown dead: {rows:#?}"
    );

    for args in [vec!["cleanup", "--run", &run_id], vec!["cleanup"]] {
        let mut c = ukload(dir.path());
        c.args(&args).args(["--grace-ms", "200"]);
        let out = output_within(c, Duration::from_secs(30));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("harness is alive"), "{args:?}: {text}");
        assert_eq!(
            run_processes(&run_id).len(),
            2,
            "{args:?} touched a live run: {text}"
        );
    }
    end_run(harness, &run_id);
}

#[test]
fn ps_does_not_show_another_users_spoofed_marker() {
    use std::os::unix::process::CommandExt;
    if !root_prerequisite() {
        return;
    }
    let dir = TempDir::new("spoofps");
    let run_id = format!("spoof{}", std::process::id());
    let (cid, _) = cid_bounds(1);
    let spoofer = Reap(
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sleep",
                "60",
            ])
            .env("UKLOAD_RUN", &run_id)
            .env("UKLOAD_INSTANCE", "0")
            .env("UKLOAD_CID", cid.to_string())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let pid = spoofer.0.id();
    let end = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{pid}/status"))
        .is_ok_and(|s| s.contains("Name:\tsleep") && s.contains("Uid:\t65534"))
    {
        assert!(Instant::now() < end, "spoofer never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(run_processes(&run_id).len(), 1, "the marker is there");

    let mut ps = ukload(dir.path());
    ps.args(["ps", "--format", "json"]);
    let out = output_within(ps, Duration::from_secs(20));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !v.as_array()
            .unwrap()
            .iter()
            .any(|r| r["run_id"] == run_id.as_str()),
        "another user's process listed as ours: {v:#}"
    );
    let mut c = ukload(dir.path());
    c.args(["cleanup", "--run", &run_id, "--grace-ms", "200"]);
    let out = output_within(c, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(&pid.to_string()), "{text}");
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok(),
        "another user's process was killed"
    );
    drop(spoofer);
}
