//! Short-lived programs run to completion under a deadline: a tool's
//! `--version`, `mkfs.erofs`, a question to an interpreter. The program's
//! stdin is `/dev/null` and both its outputs are collected; past the deadline
//! the child (the one process started here, by its unreaped pid, so the id
//! cannot name another process) is killed and reaped.
//!
//! [`wait_until`] is the deadline wait on its own, for callers that own a
//! longer-lived child and decide themselves what happens at the deadline.

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags};

/// Poll interval of [`wait_until`] when the kernel has no `pidfd_open`.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Longest single sleep on a pidfd: if another reaper collects the child, the
/// pidfd may never become readable for us, so `waitpid` is retried this often
/// (and reports ECHILD).
const EXIT_POLL_INTERVAL_PIDFD: Duration = Duration::from_millis(50);

/// What a program printed and how it ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// Its stdout, decoded lossily.
    pub stdout: String,
    /// Its stderr, decoded lossily.
    pub stderr: String,
}

impl Finished {
    /// stdout if the program exited 0, else an error naming `cmd` with its
    /// status and stderr.
    pub fn ok(self, cmd: &Command) -> Result<String, String> {
        if self.status.success() {
            Ok(self.stdout)
        } else {
            Err(format!("{cmd:?} {}: {}", self.status, self.stderr.trim()))
        }
    }
}

/// Runs `cmd` (stdin `/dev/null`, stdout and stderr collected) to its end
/// within `limit`. Past it the child is killed (SIGKILL to its pid, while it
/// is still unreaped and so still ours) and reaped, and the error is
/// [`io::ErrorKind::TimedOut`]. Both pipes are drained while it runs, so a
/// chatty program cannot stall on a full pipe.
pub fn run_within(cmd: &mut Command, limit: Duration) -> io::Result<Finished> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let t_out = drain(child.stdout.take());
    let t_err = drain(child.stderr.take());
    let waited = wait_until(&mut child, Instant::now() + limit);
    let status = match waited {
        Ok(Some(status)) => status,
        Ok(None) | Err(_) => {
            // `child` is unreaped here (or already gone), so the pid is still ours.
            let _ = child.kill();
            let _ = child.wait();
            return Err(waited.err().unwrap_or_else(|| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{cmd:?} took longer than {} s", limit.as_secs()),
                )
            }));
        }
    };
    Ok(Finished {
        status,
        stdout: joined(t_out),
        stderr: joined(t_err),
    })
}

/// A thread reading `pipe` to its end.
fn drain(pipe: Option<impl Read + Send + 'static>) -> Option<JoinHandle<String>> {
    let mut pipe = pipe?;
    Some(std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = pipe.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }))
}

fn joined(t: Option<JoinHandle<String>>) -> String {
    t.and_then(|t| t.join().ok()).unwrap_or_default()
}

/// Waits for `child` to exit until `deadline`, reaping it: `Some(status)`,
/// or `None` at the deadline (the child is left as it is). A failed
/// `waitpid` is returned as it is (ECHILD: another reaper collected it).
///
/// Sleeps in poll(2) on a pidfd when the kernel has `pidfd_open` (Linux
/// 5.3+), otherwise polls every [`EXIT_POLL_INTERVAL`].
pub fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    if let Some(status) = child.try_wait()? {
        return Ok(Some(status));
    }
    // Opened while the child is unreaped: the pidfd names this very process.
    let pidfd = crate::proc::pidfd_open(child.id() as i32).ok();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let remaining = deadline - now;
        match &pidfd {
            Some(fd) => poll_readable(fd, remaining.min(EXIT_POLL_INTERVAL_PIDFD))?,
            None => std::thread::sleep(remaining.min(EXIT_POLL_INTERVAL)),
        }
    }
}

/// Waits until `fd` is readable (a pidfd is readable once the process exits) or `timeout`.
fn poll_readable(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let mut pfd = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut pfd, crate::clock::poll_timeout(timeout)) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(e) => {
            let err = io::Error::from(e);
            Err(io::Error::new(err.kind(), format!("poll(pidfd): {err}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", script]);
        c
    }

    fn pid_exists(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn both_outputs_and_the_status_are_collected() {
        let done = run_within(
            &mut sh("echo out; echo err >&2; exit 3"),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(done.status.code(), Some(3));
        assert_eq!(done.stdout, "out\n");
        assert_eq!(done.stderr, "err\n");
        let cmd = sh("true");
        let err = done.ok(&cmd).unwrap_err();
        assert!(
            err.contains("err") && err.contains("exit status: 3"),
            "{err}"
        );
    }

    #[test]
    fn stdin_is_empty_and_a_chatty_program_does_not_stall() {
        // 1 MiB on each pipe: more than a pipe buffer holds.
        let done = run_within(
            &mut sh("cat; head -c 1048576 /dev/zero; head -c 1048576 /dev/zero >&2"),
            Duration::from_secs(20),
        )
        .unwrap();
        assert!(done.status.success());
        assert_eq!(done.stdout.len(), 1 << 20);
        assert_eq!(done.stderr.len(), 1 << 20);
    }

    #[test]
    fn past_the_deadline_the_child_is_killed_and_reaped() {
        let pid_file = std::env::temp_dir().join(format!(
            "ukload-subprocess-{}-deadline.pid",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&pid_file);
        let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
        let start = Instant::now();
        let err = run_within(&mut sh(&script), Duration::from_millis(500)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("took longer than"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let _ = std::fs::remove_file(&pid_file);
        // Reaped: not even a zombie is left.
        assert!(!pid_exists(pid), "pid {pid} still exists");
    }

    #[test]
    fn wait_until_leaves_a_running_child_and_reaps_an_ended_one() {
        let mut cmd = sh("exec sleep 30");
        cmd.stdout(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let pid = child.id();
        assert_eq!(
            wait_until(&mut child, Instant::now() + Duration::from_millis(100)).unwrap(),
            None
        );
        assert!(pid_exists(pid), "wait_until must leave the child running");
        child.kill().unwrap();
        let status = wait_until(&mut child, Instant::now() + Duration::from_secs(5))
            .unwrap()
            .expect("reaped after SIGKILL");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(!pid_exists(pid));
    }

    #[test]
    fn a_missing_program_is_not_found() {
        let err = run_within(
            &mut Command::new("/nonexistent/ukload-tool"),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
