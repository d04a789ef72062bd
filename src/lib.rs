//! ukload: spawn N unikernels / microVMs at once, measure how fast each really
//! boots and how much memory each really uses, execute MCP tools inside them
//! over vsock, and tear everything down leaving no process behind.
//!
//! Layering (one module per concept; `main.rs` only parses and dispatches):
//! - [`framing`]: newline-delimited and 4-byte-length framing, bounded.
//! - [`jsonrpc`]: JSON-RPC 2.0 messages and the `ping` reply shape.
//! - [`vsock`]: `AF_VSOCK` through libc and the hybrid Unix-socket form.
//! - [`guest`]: the guest agent (what `ukload-guest` runs).
//! - [`proc`]: reading `/proc` (process table, markers, smaps_rollup).
//! - [`memory`]: RSS/PSS of whole process trees.
//! - [`cid`]: the host-wide CID registry (one `flock`ed file per CID).
//! - [`fsafe`]: directories and files another user cannot redirect (no symlinks, owner checks).
//! - [`supervisor`]: fork/exec in process groups and cgroups, subreaper,
//!   reaping, killing, watchdog, cgroup v2 containment.
//! - [`launcher`]: how an instance is started (process, kraft, exec).
//! - [`probe`]: boot readiness (JSON-RPC ping over vsock, console marker), blocking.
//! - [`readiness`]: one event loop watching every pending boot at once.
//! - [`run`]: the five phases of `ukload run`.
//! - [`report`]: human and JSON reports, verdicts.
//! - [`export`]: JUnit XML and Prometheus text files.
//! - [`html`]: the self-contained HTML report.
//! - [`doctor`]: what each launcher needs, present or missing.
//! - [`merge`]: one verdict from the reports of several hosts.
//! - [`instances`]: `ukload ps` and `ukload cleanup` across runs.
//! - [`cycles`]: `ukload cycles`, spawn → boot → terminate repeated, leak checks.

// Every unsafe block says why it is sound (as Firecracker does).
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cid;
pub mod clock;
pub mod cycles;
pub mod doctor;
pub mod elf;
pub mod exit;
pub mod export;
pub mod framing;
pub mod fsafe;
pub mod guest;
pub mod html;
pub mod image;
pub mod instances;
pub mod jsonrpc;
pub mod launcher;
pub mod logging;
pub mod mcp;
pub mod memory;
pub mod merge;
pub mod paths;
pub mod probe;
pub mod proc;
pub mod progress;
pub mod readiness;
pub mod report;
pub mod rootfs;
pub mod run;
pub mod runs;
pub mod stats;
pub mod subprocess;
pub mod supervisor;
pub mod toolcall;
pub mod vmabi;
pub mod vsock;

/// Environment variable carried by every process ukload starts: `UKLOAD_RUN=<run id>`.
pub const ENV_RUN: &str = "UKLOAD_RUN";
/// Environment variable naming the instance index within the run.
pub const ENV_INSTANCE: &str = "UKLOAD_INSTANCE";
/// Environment variable naming the CID given to the instance.
pub const ENV_CID: &str = "UKLOAD_CID";
/// Default vsock port of the guest agent (the seed's port).
pub const DEFAULT_PORT: u32 = 5252;
