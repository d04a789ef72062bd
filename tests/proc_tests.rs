//! `/proc` reading, markers, memory figures, marker-guarded signalling and
//! `cleanup`, against real processes this test starts (each in its own
//! process group, all killed and checked gone at the end of each test).

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ukload::instances::{self, CleanupOptions};
use ukload::memory;
use ukload::proc;
use ukload::{ENV_CID, ENV_INSTANCE, ENV_RUN};

/// How long a started process may take to show up (the machine is shared).
const APPEAR_TIMEOUT: Duration = Duration::from_secs(20);
/// How long killed processes may take to disappear.
const VANISH_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);
const KIB: u64 = 1024;
/// Memory the test program touches.
const TOUCHED_BYTES: u64 = 64 * 1024 * 1024;
/// Allowed error of the measured increase, in percent.
const MEMORY_TOLERANCE_PERCENT: u64 = 3;

fn unique(tag: &str) -> String {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "test-{tag}-{}-{nanos}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `f` until it returns `Some` or `timeout` passes.
fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Everything a test starts for run `run`: children in their own process
/// groups. On drop, SIGKILLs the groups and every process still marked with
/// the run, reaps the children, and checks nothing marked is left.
struct RunGuard {
    run: String,
    children: Vec<Child>,
    /// Children already reaped: their pids may be reused by anyone, so their
    /// process groups are never signalled again.
    reaped: HashSet<i32>,
}

impl RunGuard {
    fn new(tag: &str) -> RunGuard {
        RunGuard {
            run: unique(tag),
            children: Vec::new(),
            reaped: HashSet::new(),
        }
    }

    /// `sh -c script` marked with the run (and `instance`/`cid` if given),
    /// in a new process group. Returns its pid.
    fn spawn_sh(&mut self, script: &str, instance: Option<u32>, cid: Option<u32>) -> i32 {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .env(ENV_RUN, &self.run)
            .env_remove(ENV_INSTANCE)
            .env_remove(ENV_CID)
            .env_remove(ukload::paths::ENV_RUNTIME_DIR)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0);
        if let Some(i) = instance {
            cmd.env(ENV_INSTANCE, i.to_string());
        }
        if let Some(c) = cid {
            cmd.env(ENV_CID, c.to_string());
        }
        self.push(cmd)
    }

    fn push(&mut self, mut cmd: Command) -> i32 {
        let child = cmd.spawn().expect("spawn test process");
        let pid = child.id() as i32;
        self.children.push(child);
        pid
    }

    /// Reaps our direct child `pid` if it exited (leaving orphans behind).
    fn wait_child_exit(&mut self, pid: i32) {
        let child = self
            .children
            .iter_mut()
            .find(|c| c.id() as i32 == pid)
            .unwrap();
        let status = wait_for(APPEAR_TIMEOUT, || child.try_wait().unwrap());
        assert!(status.is_some(), "child {pid} did not exit");
        self.reaped.insert(pid);
    }

    fn marked(&self) -> Vec<proc::Marked> {
        proc::scan_marked(Some(&self.run))
            .into_iter()
            .filter(|m| !m.stat.is_zombie())
            .collect()
    }

    /// Waits until `n` live processes carry the run's marker.
    fn wait_marked(&self, n: usize) -> Vec<proc::Marked> {
        wait_for(APPEAR_TIMEOUT, || {
            let m = self.marked();
            (m.len() == n).then_some(m)
        })
        .unwrap_or_else(|| panic!("expected {n} marked processes, have {:?}", self.marked()))
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        for c in &self.children {
            let pid = c.id() as i32;
            if !self.reaped.contains(&pid) {
                // SAFETY: kill(2) on the process group we created for this
                // child; it is not reaped, so the id still names our group.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        }
        for m in proc::scan_marked(Some(&self.run)) {
            let _ = proc::signal_if_marked(m.pid, &self.run, libc::SIGKILL);
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        let clean = wait_for(VANISH_TIMEOUT, || self.marked().is_empty().then_some(()));
        if clean.is_none() && !std::thread::panicking() {
            panic!("test left processes behind: {:?}", self.marked());
        }
    }
}

#[test]
fn scan_marked_finds_a_marked_child_with_instance_and_cid() {
    let mut g = RunGuard::new("scan");
    let pid = g.spawn_sh("exec sleep 30", Some(3), Some(245));
    let found = g.wait_marked(1);
    let m = &found[0];
    assert_eq!(m.pid, pid);
    assert_eq!(m.run, g.run);
    assert_eq!((m.instance, m.cid), (Some(3), Some(245)));
    assert_ne!(m.stat.state, 'Z');
    assert_eq!(m.stat.pgid, pid, "spawned in its own group");
    // Wait for the exec to replace sh's command line.
    let cmd = wait_for(APPEAR_TIMEOUT, || {
        let c = proc::cmdline(pid).ok()?;
        (c == "sleep 30").then_some(c)
    });
    assert_eq!(cmd.as_deref(), Some("sleep 30"));
    assert_eq!(
        proc::environ_var(pid, ENV_CID).unwrap().as_deref(),
        Some("245")
    );
    assert!(proc::age(m.stat.start_ticks) < APPEAR_TIMEOUT + Duration::from_secs(5));
    // Other runs' filters do not match it; the unfiltered scan does.
    assert!(proc::scan_marked(Some("no-such-run"))
        .iter()
        .all(|x| x.pid != pid));
    assert!(proc::scan_marked(None).iter().any(|x| x.pid == pid));
}

#[test]
fn descendants_and_instance_pids_find_a_grandchild() {
    let mut g = RunGuard::new("tree");
    let pid = g.spawn_sh("sleep 30 & wait", Some(0), None);
    let marked = g.wait_marked(2);
    let grandchild = marked.iter().find(|m| m.pid != pid).unwrap();
    assert_eq!(grandchild.stat.ppid, pid);

    let table = proc::table();
    let d = proc::descendants(pid, &table);
    assert_eq!(d, vec![pid, grandchild.pid]);
    let ip = memory::instance_pids(pid, &g.run, 0, &table);
    assert_eq!(ip, vec![pid, grandchild.pid]);
    // Another instance index does not pick up marked processes of instance 0
    // (the launcher pid here names no process).
    let no_launcher = i32::MAX;
    assert!(memory::instance_pids(no_launcher, &g.run, 1, &table).is_empty());
    assert_eq!(
        memory::instance_pids(no_launcher, &g.run, 0, &table),
        vec![pid, grandchild.pid]
    );
}

#[test]
fn instance_pids_find_a_daemonized_process_by_its_marker() {
    let mut g = RunGuard::new("daemon");
    // The launcher double-forks a "VMM" and exits, as kraft does with QEMU.
    let launcher = g.spawn_sh("(sleep 30 &) ; exit 0", Some(7), Some(300));
    g.wait_child_exit(launcher);
    let marked = g.wait_marked(1);
    let daemon = &marked[0];
    assert_ne!(
        daemon.stat.ppid, launcher,
        "re-parented away from the launcher"
    );

    let table = proc::table();
    assert!(proc::descendants(launcher, &table).is_empty());
    assert_eq!(
        memory::instance_pids(launcher, &g.run, 7, &table),
        vec![daemon.pid]
    );
    let usage = memory::tree_usage(&[daemon.pid, launcher]);
    assert_eq!(usage.pids.len(), 1, "the exited launcher is skipped");
    assert!(usage.rss_kb > 0);
}

/// Path of the real python interpreter (not a version-manager shim that
/// might fork).
fn python() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is needed for the memory test");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Starts python touching `bytes` bytes, and waits until it has.
fn spawn_toucher(g: &mut RunGuard, py: &PathBuf, bytes: u64) -> i32 {
    // bytes * n writes every byte, so every page of it is resident and private.
    let script = "import sys, time\nb = b'\\x01' * int(sys.argv[1])\nprint('ready', flush=True)\ntime.sleep(60)\n";
    let mut cmd = Command::new(py);
    cmd.args(["-c", script, &bytes.to_string()])
        .env(ENV_RUN, &g.run)
        .stdout(Stdio::piped())
        .process_group(0);
    let pid = g.push(cmd);
    let stdout = g.children.last_mut().unwrap().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(APPEAR_TIMEOUT).unwrap_or_default();
    assert_eq!(line.trim(), "ready", "python {pid} did not start");
    pid
}

#[test]
fn smaps_rollup_sees_touched_memory_in_rss_and_pss() {
    let mut g = RunGuard::new("mem");
    let py = python();
    let base = spawn_toucher(&mut g, &py, 0);
    let big = spawn_toucher(&mut g, &py, TOUCHED_BYTES);
    let b = proc::smaps_rollup(base).unwrap();
    let m = proc::smaps_rollup(big).unwrap();
    let want = TOUCHED_BYTES / KIB;
    let tol = want * MEMORY_TOLERANCE_PERCENT / 100;
    let rss_delta = m.rss_kb.saturating_sub(b.rss_kb);
    let pss_delta = m.pss_kb.saturating_sub(b.pss_kb);
    assert!(
        rss_delta.abs_diff(want) <= tol,
        "RSS grew by {rss_delta} KiB, expected {want} ± {tol} (base {b:?}, big {m:?})"
    );
    assert!(
        pss_delta.abs_diff(want) <= tol,
        "PSS grew by {pss_delta} KiB, expected {want} ± {tol} (base {b:?}, big {m:?})"
    );
    let tree = memory::tree_usage(&[base, big]);
    assert_eq!(tree.pids.len(), 2);
    assert!(tree.rss_kb >= want && tree.pss_kb >= want);
    assert!(tree.pss_kb <= tree.rss_kb);
}

#[test]
fn signal_if_marked_refuses_unmarked_and_foreign_processes() {
    let mut g = RunGuard::new("signal");
    let mut unmarked = Command::new("sleep");
    unmarked.arg("30").env_remove(ENV_RUN).process_group(0);
    let plain = g.push(unmarked);
    let marked = g.spawn_sh("exec sleep 30", None, None);
    g.wait_marked(1);
    // Wait until the unmarked child has exec'd (its environ is then sleep's).
    wait_for(APPEAR_TIMEOUT, || {
        (proc::cmdline(plain).ok()? == "sleep 30").then_some(())
    })
    .unwrap();

    assert!(!proc::signal_if_marked(plain, &g.run, libc::SIGTERM).unwrap());
    assert!(!proc::signal_if_marked(marked, "some-other-run", libc::SIGTERM).unwrap());
    assert!(!proc::signal_group_if_leader_marked(plain, &g.run, libc::SIGTERM).unwrap());
    std::thread::sleep(Duration::from_millis(100));
    for c in &mut g.children {
        assert!(c.try_wait().unwrap().is_none(), "{} was signalled", c.id());
    }

    assert!(proc::signal_if_marked(marked, &g.run, libc::SIGTERM).unwrap());
    let child = g
        .children
        .iter_mut()
        .find(|c| c.id() as i32 == marked)
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGTERM));
    g.reaped.insert(marked);
    // Once reaped, the pid names nothing (or someone else): not signalled.
    assert!(!proc::signal_if_marked(marked, &g.run, libc::SIGTERM).unwrap());
}

/// A temporary runs directory (instead of the host's), removed on drop.
struct TempRuns(PathBuf);

impl TempRuns {
    fn new() -> TempRuns {
        let d = std::env::temp_dir().join(unique("runs"));
        std::fs::create_dir_all(&d).unwrap();
        TempRuns(d)
    }
}

impl Drop for TempRuns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates `<runs>/<run>/harness.lock`; returns the opened file.
fn harness_lock(runs: &Path, run: &str) -> std::fs::File {
    let dir = runs.join(run);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(ukload::paths::HARNESS_LOCK))
        .unwrap()
}

#[test]
fn cleanup_ends_orphans_of_a_dead_run_with_term_then_kill() {
    let runs = TempRuns::new();
    let mut g = RunGuard::new("cleanup-dead");
    // Present but unlocked: the harness is dead.
    drop(harness_lock(&runs.0, &g.run));
    assert!(!ukload::runs::harness_alive_in(&runs.0, &g.run));

    // Instance 0 ignores SIGTERM (needs SIGKILL); instance 1 obeys it. Both
    // launchers exit, leaving orphans that are not our children.
    let l0 = g.spawn_sh("trap '' TERM; sleep 30 & sleep 31 & exit 0", Some(0), None);
    let l1 = g.spawn_sh("sleep 32 & exit 0", Some(1), None);
    g.wait_child_exit(l0);
    g.wait_child_exit(l1);
    let before = g.wait_marked(3);

    let views: Vec<_> = instances::ps_in(&runs.0)
        .into_iter()
        .filter(|v| v.run_id == g.run)
        .collect();
    assert_eq!(views.len(), 2);
    assert_eq!(views[0].instance, Some(0));
    assert_eq!(views[0].pids.len(), 2);
    assert!(!views[0].harness_alive);
    assert!(views[0].rss_kb > 0);

    let started = Instant::now();
    let report = instances::cleanup_in(
        &runs.0,
        &CleanupOptions {
            run: Some(g.run.clone()),
            include_live: false,
            grace: Duration::from_millis(300),
        },
    );
    assert!(
        started.elapsed() < VANISH_TIMEOUT,
        "took {:?}",
        started.elapsed()
    );
    assert!(report.survivors.is_empty(), "{report}");
    assert!(report.errors.is_empty(), "{report}");
    let mut ended: Vec<i32> = report.ended.iter().map(|p| p.pid).collect();
    ended.sort_unstable();
    let mut want: Vec<i32> = before.iter().map(|m| m.pid).collect();
    want.sort_unstable();
    assert_eq!(ended, want);
    for p in &report.ended {
        let expected = if p.instance == Some(0) {
            "SIGKILL"
        } else {
            "SIGTERM"
        };
        assert_eq!(p.signal, Some(expected), "{report}");
        assert!(p.cmdline.starts_with("sleep 3"), "{report}");
    }
    assert!(g.marked().is_empty());
    assert_eq!(report.removed_run_dirs, vec![runs.0.join(&g.run)]);
    assert!(!runs.0.join(&g.run).exists());
    assert!(report.to_string().contains(&g.run));
}

#[test]
fn cleanup_leaves_live_runs_alone_unless_asked() {
    let runs = TempRuns::new();
    let mut g = RunGuard::new("cleanup-live");
    let lock = harness_lock(&runs.0, &g.run);
    // SAFETY: flock on a file we own; LOCK_NB never blocks.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&lock),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(rc, 0);
    assert!(ukload::runs::harness_alive_in(&runs.0, &g.run));
    let l = g.spawn_sh("sleep 30 & exit 0", Some(0), None);
    g.wait_child_exit(l);
    let orphan = g.wait_marked(1)[0].pid;

    let opts = CleanupOptions {
        run: Some(g.run.clone()),
        include_live: false,
        grace: Duration::from_millis(300),
    };
    let report = instances::cleanup_in(&runs.0, &opts);
    assert!(report.ended.is_empty(), "{report}");
    assert_eq!(report.skipped_live_runs, vec![g.run.clone()]);
    assert_eq!(g.wait_marked(1)[0].pid, orphan, "live run untouched");
    assert!(runs.0.join(&g.run).exists());

    let report = instances::cleanup_in(
        &runs.0,
        &CleanupOptions {
            include_live: true,
            ..opts.clone()
        },
    );
    assert_eq!(report.ended.len(), 1, "{report}");
    assert_eq!(report.ended[0].pid, orphan);
    assert!(g.marked().is_empty());
    assert!(
        report.removed_run_dirs.is_empty(),
        "a live harness keeps its directory"
    );

    drop(lock);
    assert!(!ukload::runs::harness_alive_in(&runs.0, &g.run));
    let report = instances::cleanup_in(&runs.0, &opts);
    assert_eq!(report.removed_run_dirs, vec![runs.0.join(&g.run)]);
}

#[test]
fn cleanup_checks_the_harness_lock_in_the_runtime_dir_the_process_names() {
    // Our runs directory knows nothing of this run; the process says its
    // harness lives under another runtime directory, where the lock is held.
    let ours = TempRuns::new();
    let theirs = TempRuns::new();
    let mut g = RunGuard::new("cleanup-elsewhere");
    let lock = harness_lock(&theirs.0.join("runs"), &g.run);
    // SAFETY: flock on a file we own; LOCK_NB never blocks.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&lock),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(rc, 0);
    let mut cmd = Command::new("sleep");
    cmd.arg("30")
        .env(ENV_RUN, &g.run)
        .env(ukload::paths::ENV_RUNTIME_DIR, &theirs.0)
        .process_group(0);
    let pid = g.push(cmd);
    g.wait_marked(1);

    let opts = CleanupOptions {
        run: Some(g.run.clone()),
        include_live: false,
        grace: Duration::from_millis(300),
    };
    let report = instances::cleanup_in(&ours.0, &opts);
    assert!(report.ended.is_empty(), "{report}");
    assert_eq!(report.skipped_live_runs, vec![g.run.clone()]);
    assert_eq!(g.wait_marked(1)[0].pid, pid);
    let view = instances::ps_in(&ours.0)
        .into_iter()
        .find(|v| v.run_id == g.run)
        .unwrap();
    assert!(view.harness_alive);

    drop(lock);
    // Our direct child becomes a zombie once killed: reap it meanwhile, as a
    // harness would, so cleanup can see it gone.
    let child = g.children.pop().unwrap();
    let reaper = std::thread::spawn(move || {
        let mut child = child;
        child.wait().unwrap()
    });
    let report = instances::cleanup_in(&ours.0, &opts);
    assert_eq!(report.ended.len(), 1, "{report}");
    assert_eq!(report.ended[0].pid, pid);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(reaper.join().unwrap().signal(), Some(libc::SIGTERM));
}

/// uid of `nobody`, the other user in the spoofing tests.
const NOBODY: u32 = 65534;

/// A process of another user (uid 65534, through `setpriv`) running
/// `sleep 60` with the given environment; killed by pid and reaped on drop.
/// `None` (the test is skipped, see [`common::prerequisite`]) unless we are
/// root and `setpriv` runs.
struct Foreign(Child);

impl Foreign {
    fn spawn(env: &[(&str, &str)]) -> Option<Foreign> {
        if !common::root_prerequisite() {
            return None;
        }
        let mut cmd = Command::new("setpriv");
        cmd.args([
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".into(),
            "sleep".into(),
            "60".into(),
        ])
        .env_remove(ENV_RUN)
        .env_remove(ENV_INSTANCE)
        .env_remove(ENV_CID)
        .env_remove(ukload::paths::ENV_RUNTIME_DIR)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .process_group(0);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                common::prerequisite(Some(format!("cannot run setpriv: {e}")));
                return None;
            }
        };
        let f = Foreign(child);
        // Wait until it is `sleep`, running as nobody, with its markers.
        let pid = f.pid();
        let ready = wait_for(APPEAR_TIMEOUT, || {
            let is_sleep = proc::stat(pid).is_ok_and(|s| s.comm == "sleep");
            let nobody = proc::uids(pid).is_ok_and(|u| u == (NOBODY, NOBODY));
            (is_sleep && nobody).then_some(())
        });
        assert!(
            ready.is_some(),
            "foreign process {pid} never became sleep as nobody"
        );
        Some(f)
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    fn alive(&self) -> bool {
        proc::stat(self.pid()).is_ok_and(|s| !s.is_zombie())
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn another_users_process_carrying_our_run_marker_is_ignored_and_never_signalled() {
    let mut g = RunGuard::new("spoof");
    // Our instance: an orphan (so that cleanup, not we, sees it end).
    let l = g.spawn_sh("sleep 30 & exit 0", Some(0), Some(5030));
    g.wait_child_exit(l);
    let ours = g.wait_marked(1)[0].pid;
    let Some(foreign) = Foreign::spawn(&[
        (ENV_RUN, g.run.as_str()),
        (ENV_INSTANCE, "0"),
        (ENV_CID, "5030"),
    ]) else {
        return;
    };
    let fp = foreign.pid();

    // The scan sees the marker (any owner) but the default scan keeps ours only.
    let table = proc::table();
    assert!(proc::scan_marked_owned_by(&table, Some(&g.run), None)
        .iter()
        .any(|m| m.pid == fp));
    let marked: Vec<i32> = proc::scan_marked_in(&table, Some(&g.run))
        .iter()
        .map(|m| m.pid)
        .collect();
    assert_eq!(marked, vec![ours], "only our own process is the run's");
    assert!(!proc::scan_marked(None).iter().any(|m| m.pid == fp));

    // Not counted in instance 0's memory (it was 307 MB with a big spoofer).
    let pids = memory::instance_pids(ours, &g.run, 0, &table);
    assert!(!pids.contains(&fp), "{pids:?}");

    // Never signalled, by pid or group, nor by cleanup of the run.
    assert!(!proc::signal_if_marked(fp, &g.run, libc::SIGTERM).unwrap());
    assert!(!proc::signal_group_if_leader_marked(fp, &g.run, libc::SIGTERM).unwrap());
    let runs = TempRuns::new();
    let report = instances::cleanup_in(
        &runs.0,
        &CleanupOptions {
            run: Some(g.run.clone()),
            include_live: true,
            grace: Duration::from_millis(300),
        },
    );
    assert!(report.ended.iter().all(|p| p.pid != fp), "{report}");
    assert!(report.survivors.is_empty(), "{report}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(foreign.alive(), "another user's process was signalled");
}
