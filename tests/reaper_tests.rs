//! The reaper keeps the end of a child killed by a real-time signal (nix's
//! `waitpid` fails on those after the kernel reaped the child, which lost the
//! instance's end). Its own binary: the reaper collects every child of the
//! process.

use std::time::Duration;
use ukload::supervisor::{Command, Exit, Supervisor};

#[test]
fn a_child_killed_by_a_real_time_signal_is_reaped_with_that_signal() {
    let sup = Supervisor::init().expect("supervisor");
    let rt = libc::SIGRTMIN() + 3;
    let child = sup
        .spawn(Command::new("sleep").args(["30"]))
        .expect("spawn sleep");
    // SAFETY: signalling our own child by pid.
    assert_eq!(unsafe { libc::kill(child.pid, rt) }, 0);
    let end = sup.wait_timeout(child.pid, Duration::from_secs(10));
    assert_eq!(end, Some(Exit::Signal(rt)), "sleep killed by signal {rt}");
    // And a plain exit still reads as a code.
    let ok = sup
        .spawn(Command::new("sh").args(["-c", "exit 7"]))
        .expect("spawn sh");
    assert_eq!(
        sup.wait_timeout(ok.pid, Duration::from_secs(10)),
        Some(Exit::Code(7))
    );
}
