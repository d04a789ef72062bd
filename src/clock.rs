//! Clocks shared by host and guest. `CLOCK_MONOTONIC` is system-wide, so a
//! host process and a guest running as a host process can compare stamps;
//! `CLOCK_BOOTTIME` inside a VM is time since that VM's kernel booted.

use nix::sys::time::TimeSpec;
use nix::time::{clock_gettime, ClockId};

fn read(clock: ClockId) -> u64 {
    // The clock ids used are constants the kernel always supports.
    let ts = clock_gettime(clock).unwrap_or_else(|_| TimeSpec::new(0, 0));
    (ts.tv_sec() as u64) * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn monotonic_ns() -> u64 {
    read(ClockId::CLOCK_MONOTONIC)
}

/// Nanoseconds on `CLOCK_BOOTTIME` (time since this kernel booted, including suspend).
pub fn boottime_ns() -> u64 {
    read(ClockId::CLOCK_BOOTTIME)
}
