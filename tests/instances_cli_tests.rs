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
