//! `ukload-guest` as PID 1 inside a microVM: mounts, module loading with
//! `finit_module(2)`, zombie reaping, power-off.
//! OWNER: microVM helper.

// TEMPORARY STUB (transport helper), so that `ukload-guest` builds on the
// transport branch; the microVM helper's real pid1.rs replaces all of this.

/// What PID 1 setup learned (stub).
pub struct Pid1Config {
    pub port: u32,
}

/// PID 1 setup (stub: does nothing).
pub fn init_as_pid1() -> Result<Pid1Config, String> {
    Ok(Pid1Config {
        port: crate::DEFAULT_PORT,
    })
}

/// Powers the VM off (stub: exits).
pub fn poweroff() -> ! {
    std::process::exit(1)
}
