//! One guard for "start a harness, stop or kill it, assert nothing of its run
//! is left", and one allocator of CID blocks for tests that need their own.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A CID range of `n` CIDs that no other test of this test binary gets
/// (`"LO-HI"`, for `--cid-range`). The blocks start at 20000, above every
/// literal range left in the suite (invalid ranges, the default 200-299).
pub fn cid_block(n: u32) -> String {
    let (lo, hi) = cid_bounds(n);
    format!("{lo}-{hi}")
}

/// As [`cid_block`], the block's first and last CID, for a test that names a
/// CID of its block (a log or lock file), checks that CIDs fall in it, or
/// derives overlapping ranges from it; `format!("{lo}-{hi}")` is the range.
pub fn cid_bounds(n: u32) -> (u32, u32) {
    static NEXT: AtomicU32 = AtomicU32::new(20_000);
    let n = n.max(1);
    let lo = NEXT.fetch_add(n.div_ceil(10) * 10, Ordering::Relaxed);
    (lo, lo + n - 1)
}

/// A `ukload` run or cycle series in the background, followed through its
/// `--progress json` events. Dropping it SIGKILLs the harness (by pid) if it
/// still runs and then anything still carrying its run's marker.
pub struct BackgroundRun {
    pub child: Child,
    /// From the first event (`spawning`, or `cycles`).
    pub run_id: String,
    lines: mpsc::Receiver<String>,
    /// Every stderr line read so far.
    pub seen: Vec<String>,
}

/// How long a harness may take to announce its run.
const ANNOUNCE_WITHIN: Duration = Duration::from_secs(30);

impl BackgroundRun {
    /// Starts `ukload ARGS` isolated in `dir` (see [`super::ukload`]), with
    /// `-q` taken out and `--progress json` added, stdout discarded; returns
    /// once the run has announced its id.
    pub fn start(dir: &Path, args: &[String], env: &[(&str, &str)]) -> BackgroundRun {
        Self::start_with(dir, args, env, false)
    }

    /// As [`BackgroundRun::start`], the harness in a session of its own (no
    /// controlling terminal, its own process group: a CI job, a cron job).
    pub fn start_detached(dir: &Path, args: &[String], env: &[(&str, &str)]) -> BackgroundRun {
        Self::start_with(dir, args, env, true)
    }

    fn start_with(
        dir: &Path,
        args: &[String],
        env: &[(&str, &str)],
        detach: bool,
    ) -> BackgroundRun {
        let mut cmd: Command = super::ukload(dir);
        let sub = args.first().expect("a ukload command");
        cmd.arg(sub)
            .args(args[1..].iter().filter(|a| *a != "-q"))
            .args(["--progress", "json"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if detach {
            // SAFETY: setsid is async-signal-safe and touches no memory; it
            // only detaches the child from any controlling terminal.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    libc::setsid();
                    Ok(())
                })
            };
        }
        let mut child = cmd.spawn().unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut run = BackgroundRun {
            child,
            run_id: String::new(),
            lines,
            seen: Vec::new(),
        };
        let first = run.wait_line("the run's first event", ANNOUNCE_WITHIN, |v| {
            v["run_id"].is_string()
        });
        run.run_id = first["run_id"].as_str().unwrap().to_string();
        run
    }

    /// Waits up to `within` for a progress event of kind `event`.
    pub fn wait_event(&mut self, event: &str, within: Duration) -> Value {
        self.wait_line(event, within, |v| v["event"] == event)
    }

    fn wait_line(&mut self, what: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if let Ok(v) = serde_json::from_str::<Value>(&l) {
                        if pred(&v) {
                            return v;
                        }
                    }
                }
                Err(_) => panic!(
                    "ukload never showed {what} within {within:?}; stderr so far: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Live processes of this run (by its marker).
    pub fn processes(&self) -> Vec<(i32, String)> {
        super::run_processes(&self.run_id)
    }

    /// Sends `sig` to the harness (by pid).
    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child by pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits up to `within` for the harness to exit (SIGKILLs it and panics
    /// past that).
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let end = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "ukload still running {within:?} later; stderr: {:#?}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asserts that within `within` no process of the run is left; anything
    /// left is SIGKILLed (by pid) before the panic names it.
    pub fn assert_nothing_left(&self, within: Duration) {
        super::assert_run_gone(&self.run_id, within);
    }
}

impl Drop for BackgroundRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if !self.run_id.is_empty() {
            super::kill_run(&self.run_id);
        }
    }
}
