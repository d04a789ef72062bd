//! The CID registry across threads and processes, in a temporary registry
//! directory per test (never the host's real one).

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ukload::cid::{CidError, CidRange, CidRegistry, HolderInfo};

/// Generous bound for "fails fast": allocation must never wait for a lock.
const FAIL_FAST_BOUND: Duration = Duration::from_secs(1);
/// How long a helper child may take to start and lock its file.
const CHILD_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A fresh registry directory, removed on drop.
struct TempRegistry {
    dir: PathBuf,
    reg: CidRegistry,
}

impl TempRegistry {
    fn new(tag: &str) -> TempRegistry {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "ukload-cid-test-{tag}-{}-{nanos}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        // Unrelated processes on this shared machine may carry UKLOAD_CID in
        // the ranges used here: only the lock files decide in these tests.
        let reg = CidRegistry::open(&dir)
            .expect("open temp registry")
            .check_leftover_users(false);
        TempRegistry { dir, reg }
    }
}

impl Drop for TempRegistry {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn holder(run: &str) -> HolderInfo {
    HolderInfo {
        pid: std::process::id(),
        run_id: run.to_string(),
        instance: None,
    }
}

fn range(s: &str) -> CidRange {
    s.parse().unwrap()
}

#[test]
fn allocation_is_all_or_nothing() {
    let t = TempRegistry::new("all-or-nothing");
    let r = range("200-209");
    let held = t
        .reg
        .allocate(range("205-209"), 5, &holder("other"))
        .unwrap();
    let err = t.reg.allocate(r, 6, &holder("me")).unwrap_err();
    match &err {
        CidError::Exhausted {
            wanted,
            free,
            holders,
            ..
        } => {
            assert_eq!((*wanted, *free), (6, 5));
            let busy: Vec<u32> = holders.iter().map(|(c, _)| *c).collect();
            assert_eq!(busy, vec![205, 206, 207, 208, 209]);
        }
        other => panic!("expected Exhausted, got {other:?}"),
    }
    // Nothing of the failed attempt is still held: all 5 free CIDs can be taken.
    let five = t.reg.allocate(r, 5, &holder("me")).unwrap();
    let cids: Vec<u32> = five.iter().map(|l| l.cid).collect();
    assert_eq!(cids, vec![200, 201, 202, 203, 204]);
    drop(held);
}

#[test]
fn four_threads_get_distinct_cids_and_a_fifth_fails_fast() {
    let t = TempRegistry::new("threads");
    let r = range("200-299");
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let reg = t.reg.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                reg.allocate(r, 25, &holder(&format!("thread{i}")))
                    .expect("25 CIDs for each of 4 threads fit in 100")
            })
        })
        .collect();
    let leases: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let distinct: HashSet<u32> = leases.iter().map(|l| l.cid).collect();
    assert_eq!(leases.len(), 100);
    assert_eq!(distinct.len(), 100);
    assert!(distinct.iter().all(|c| r.contains(*c)));

    let started = Instant::now();
    let err = t.reg.allocate(r, 1, &holder("fifth")).unwrap_err();
    assert!(
        started.elapsed() < FAIL_FAST_BOUND,
        "exhausted allocation took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, CidError::Exhausted { free: 0, .. }));
    let msg = err.to_string();
    assert!(msg.contains("200-299"), "{msg}");
    for i in 0..4 {
        assert!(
            msg.contains(&format!("run thread{i} pid {}", std::process::id())),
            "{msg}"
        );
    }
    assert!(msg.contains("ukload cleanup"), "{msg}");
    assert!(msg.contains("--cid-range"), "{msg}");

    // holders() sees all 100, with the runs that hold them.
    let hs = t.reg.holders(r);
    assert_eq!(hs.len(), 100);
    assert!(hs.iter().all(|(_, h)| h.run_id.starts_with("thread")));
}

#[test]
fn dropping_a_lease_frees_its_cid() {
    let t = TempRegistry::new("drop");
    let r = range("250");
    let lease = t.reg.allocate(r, 1, &holder("first")).unwrap().remove(0);
    assert_eq!(lease.cid, 250);
    assert!(t.reg.is_held(250).unwrap());
    assert!(t.reg.allocate(r, 1, &holder("second")).is_err());
    drop(lease);
    assert!(!t.reg.is_held(250).unwrap());
    let again = t.reg.allocate(r, 1, &holder("second")).unwrap();
    assert_eq!(again[0].cid, 250);
    // The lock file stays (deleting flock files races); it names the new holder.
    assert_eq!(t.reg.holders(r)[0].1.run_id, "second");
}

#[test]
fn set_instance_rewrites_the_holder_line() {
    let t = TempRegistry::new("instance");
    let mut leases = t
        .reg
        .allocate(range("300-301"), 2, &holder("run-i"))
        .unwrap();
    for (i, l) in leases.iter_mut().enumerate() {
        l.set_instance(i as u32).unwrap();
    }
    let hs = t.reg.holders(range("300-301"));
    assert_eq!(hs.len(), 2);
    assert_eq!(hs[0].1.instance, Some(0));
    assert_eq!(hs[1].1.instance, Some(1));
    let text = std::fs::read_to_string(leases[1].path()).unwrap();
    assert_eq!(
        text.lines().count(),
        1,
        "one JSON line, no leftovers: {text:?}"
    );
}

/// A child process holding `path` with an exclusive flock (python3's fcntl,
/// in its own process group so nothing can outlive the test).
struct LockHolder {
    child: Child,
    /// Set once killed and reaped: its pid may then be reused by anyone.
    reaped: bool,
}

impl LockHolder {
    fn spawn(path: &std::path::Path, run: &str) -> LockHolder {
        use std::os::unix::process::CommandExt;
        let script = r#"
import fcntl, json, os, sys, time
f = open(sys.argv[1], "r+")
fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
f.truncate(0)
f.write(json.dumps({"pid": os.getpid(), "run_id": sys.argv[2], "instance": None}) + "\n")
f.flush()
print("locked", flush=True)
time.sleep(60)
"#;
        // The registry creates the file; the child only opens it.
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap();
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(path)
            .arg(run)
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn python3");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(CHILD_READY_TIMEOUT).unwrap_or_default();
        let mut h = LockHolder {
            child,
            reaped: false,
        };
        if line.trim() != "locked" {
            h.kill();
            panic!("lock holder did not start: {line:?}");
        }
        h
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL the whole group and reap the child.
    fn kill(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: kill(2) with the negated pgid of the group we created; the
        // leader is not reaped yet, so that group id cannot name anyone else.
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn a_holder_killed_with_sigkill_frees_its_cid() {
    let t = TempRegistry::new("sigkill");
    let r = range("260");
    let mut h = LockHolder::spawn(&t.reg.lock_path(260), "py-holder");

    let err = t.reg.allocate(r, 1, &holder("me")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("run py-holder pid {} holds 260", h.pid())),
        "{msg}"
    );
    assert_eq!(t.reg.holders(r)[0].1.pid as i32, h.pid());

    h.kill();
    let leases = t
        .reg
        .allocate(r, 1, &holder("me"))
        .expect("freed by the kernel");
    assert_eq!(leases[0].cid, 260);
}

#[test]
fn range_parsing_validates_and_explains() {
    assert_eq!(
        range("200-299"),
        CidRange {
            start: 200,
            end: 299
        }
    );
    assert_eq!(range(" 250 ").len(), 1);
    assert_eq!(range("200-299").len(), 100);
    assert!(range("200-299").contains(299) && !range("200-299").contains(300));

    let err = "299-200".parse::<CidRange>().unwrap_err().to_string();
    assert_eq!(err, "--cid-range 299-200: start is greater than end");
    for bad in [
        "2-10",
        "0",
        "1-5",
        "3-4294967295",
        "abc",
        "200-",
        "-5",
        "200-299-300",
        "",
    ] {
        let e = bad.parse::<CidRange>().unwrap_err().to_string();
        assert!(e.starts_with(&format!("--cid-range {bad}:")), "{e}");
    }
    assert!("2-10"
        .parse::<CidRange>()
        .unwrap_err()
        .to_string()
        .contains("at least 3"));
    assert!("3-4294967295"
        .parse::<CidRange>()
        .unwrap_err()
        .to_string()
        .contains("at most 4294967294"));
    assert_eq!(range("3-4294967294").len(), 4294967292);
}

#[test]
fn opening_creates_the_directory() {
    let t = TempRegistry::new("mkdir");
    let nested = t.dir.join("a/b/cids");
    let reg = CidRegistry::open(&nested).unwrap();
    let _lease = reg.allocate(range("400"), 1, &holder("x")).unwrap();
    assert!(nested.join("cid-400.lock").is_file());
}

#[test]
fn a_cid_carried_by_a_leftover_process_of_another_run_is_not_allocated() {
    use std::os::unix::process::CommandExt;
    // High CIDs nobody else on the host uses.
    const LEFTOVER_CID: u32 = 4_000_000_000;
    let r = CidRange::new(LEFTOVER_CID, LEFTOVER_CID + 1).unwrap();
    let t = TempRegistry::new("leftover");
    let reg = t.reg.clone().check_leftover_users(true);
    let run = format!("leftover-{}", std::process::id());
    let child = Command::new("sleep")
        .arg("30")
        .env("UKLOAD_RUN", &run)
        .env("UKLOAD_INSTANCE", "4")
        .env("UKLOAD_CID", LEFTOVER_CID.to_string())
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = child.id();
    let _guard = KillGroupOnDrop(child);
    // Wait until the marker is visible (environ is readable once exec'd).
    let deadline = Instant::now() + CHILD_READY_TIMEOUT;
    while !ukload::cid::cid_users(r).iter().any(|(_, h)| h.pid == pid) {
        assert!(Instant::now() < deadline, "leftover {pid} never visible");
        std::thread::sleep(Duration::from_millis(10));
    }

    let err = reg.allocate(r, 2, &holder("new-run")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("run {run} pid {pid} holds {LEFTOVER_CID}")),
        "{msg}"
    );
    let one = reg.allocate(r, 1, &holder("new-run")).unwrap();
    assert_eq!(one[0].cid, LEFTOVER_CID + 1);
    drop(one);
    // Its own run may reuse it (a harness re-allocating), and so may a
    // registry with the check off.
    assert_eq!(reg.allocate(r, 2, &holder(&run)).unwrap().len(), 2);
    assert_eq!(t.reg.allocate(r, 2, &holder("new-run")).unwrap().len(), 2);
}

/// SIGKILLs the process group of a child we spawned with `process_group(0)`
/// and reaps it, also when the test panics.
struct KillGroupOnDrop(Child);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the group of our child, not yet reaped, so the
        // id still names our group.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Another user's `sleep 60` (uid 65534, through `setpriv`) carrying `env`;
/// killed by pid and reaped on drop. `None` (the test is skipped, see
/// [`common::prerequisite`]) unless we are root and `setpriv` runs.
fn spawn_as_nobody(env: &[(&str, &str)]) -> Option<KillGroupOnDrop> {
    use std::os::unix::process::CommandExt;
    if !common::root_prerequisite() {
        return None;
    }
    let spawned = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sleep",
            "60",
        ])
        .env_remove("UKLOAD_RUNTIME_DIR")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .process_group(0)
        .spawn();
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            common::prerequisite(Some(format!("cannot run setpriv: {e}")));
            return None;
        }
    };
    let pid = child.id();
    let guard = KillGroupOnDrop(child);
    let deadline = Instant::now() + CHILD_READY_TIMEOUT;
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if status.contains("Name:\tsleep") && status.contains("Uid:\t65534\t65534") {
            return Some(guard);
        }
        assert!(
            Instant::now() < deadline,
            "{pid} never became sleep as nobody"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn another_users_process_carrying_a_cid_does_not_block_it() {
    const SPOOFED_CID: u32 = 5031;
    let r = CidRange::new(SPOOFED_CID, SPOOFED_CID).unwrap();
    let t = TempRegistry::new("spoofed");
    let reg = t.reg.clone().check_leftover_users(true);
    let cid = SPOOFED_CID.to_string();
    let Some(_spoofer) = spawn_as_nobody(&[
        ("UKLOAD_RUN", "x"),
        ("UKLOAD_INSTANCE", "0"),
        ("UKLOAD_CID", cid.as_str()),
    ]) else {
        return;
    };
    assert!(
        ukload::cid::cid_users(r).is_empty(),
        "another user's marker is not a leftover of ours"
    );
    let lease = reg
        .allocate(r, 1, &holder("root-run"))
        .expect("a spoofed UKLOAD_CID must not block the range");
    assert_eq!(lease[0].cid, SPOOFED_CID);
}

#[test]
fn registry_errors_are_io_errors_not_a_full_range() {
    let t = TempRegistry::new("ioerr");
    // A regular file where a directory should be: ENOTDIR, an I/O error (74).
    let file = t.dir.join("plain-file");
    std::fs::write(&file, "").unwrap();
    let err = CidRegistry::open(&file.join("cids")).unwrap_err();
    assert!(!err.is_exhausted(), "{err}");
    assert_eq!(err.exit_code(), ukload::exit::EXIT_IOERR, "{err}");
    assert_eq!(ukload::exit::EXIT_IOERR, 74);
    // A planted symlink at a lock file: refused, also 74, not "no room".
    std::os::unix::fs::symlink("/nonexistent-target", t.dir.join("cid-5032.lock")).unwrap();
    let err = t.reg.allocate(range("5032"), 1, &holder("me")).unwrap_err();
    assert_eq!(err.exit_code(), 74, "{err}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    // A full range is 75.
    let _held = t.reg.allocate(range("5033"), 1, &holder("a")).unwrap();
    let err = t.reg.allocate(range("5033"), 1, &holder("b")).unwrap_err();
    assert!(err.is_exhausted());
    assert_eq!(err.exit_code(), ukload::exit::EXIT_TEMPFAIL);
}

#[test]
fn a_lease_whose_lock_file_was_deleted_re_creates_and_re_locks_it() {
    let t = TempRegistry::new("relock");
    let mut leases = t.reg.allocate(range("5034"), 1, &holder("a")).unwrap();
    let lease = &mut leases[0];
    assert!(lease.is_current());
    assert!(!lease.ensure_current().unwrap(), "nothing to do");

    std::fs::remove_dir_all(&t.dir).unwrap();
    assert!(!lease.is_current());
    assert!(!t.reg.is_held(5034).unwrap(), "the file is gone");
    assert!(lease.ensure_current().unwrap());
    assert!(lease.is_current());
    assert!(t.reg.is_held(5034).unwrap());
    let err = t.reg.allocate(range("5034"), 1, &holder("b")).unwrap_err();
    assert!(err.is_exhausted(), "{err}");
    let text = std::fs::read_to_string(t.reg.lock_path(5034)).unwrap();
    assert!(text.contains("\"run_id\":\"a\""), "{text}");
}
