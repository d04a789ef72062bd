//! `ukload-guest` as PID 1 inside a microVM: mounts, module loading with
//! `finit_module(2)`, zombie reaping, power-off.
//! OWNER: microVM helper.
