//! Clocks shared by host and guest. `CLOCK_MONOTONIC` is system-wide, so a
//! host process and a guest running as a host process can compare stamps;
//! `CLOCK_BOOTTIME` inside a VM is time since that VM's kernel booted.

use nix::poll::PollTimeout;
use nix::sys::time::TimeSpec;
use nix::time::{clock_gettime, ClockId};
use std::time::Duration;

fn read(clock: ClockId) -> u64 {
    // The clock ids used are constants the kernel always supports.
    let ts = clock_gettime(clock).unwrap_or_else(|_| TimeSpec::new(0, 0));
    (ts.tv_sec() as u64) * 1_000_000_000 + ts.tv_nsec() as u64
}

/// `timeout` as `poll(2)` milliseconds, rounded up so that a
/// sub-millisecond remainder still waits (rather than becoming a busy loop);
/// beyond `poll`'s range, its longest wait.
pub fn poll_timeout(timeout: Duration) -> PollTimeout {
    PollTimeout::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(PollTimeout::MAX)
}

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn monotonic_ns() -> u64 {
    read(ClockId::CLOCK_MONOTONIC)
}

/// Nanoseconds on `CLOCK_BOOTTIME` (time since this kernel booted, including suspend).
pub fn boottime_ns() -> u64 {
    read(ClockId::CLOCK_BOOTTIME)
}

#[cfg(test)]
mod poll_timeout_tests {
    use super::*;

    #[test]
    fn poll_timeouts_round_up_and_saturate() {
        let ms = |n: u32| PollTimeout::try_from(n).unwrap();
        assert_eq!(poll_timeout(Duration::ZERO), ms(0));
        assert_eq!(poll_timeout(Duration::from_micros(1)), ms(1));
        assert_eq!(poll_timeout(Duration::from_micros(2_001)), ms(3));
        assert_eq!(
            poll_timeout(Duration::from_secs(u64::MAX)),
            PollTimeout::MAX
        );
    }
}
