//! The process exit codes of `ukload` and `ukload-guest`: one table, so a
//! script can rely on each number meaning one thing everywhere (run, cycles,
//! report merge, doctor, mcp tools|call|bench, the guest agent).
//!
//! 0/1/2 judge a run; 3-6 are the `mcp` commands' outcomes; 64-75 follow
//! sysexits.h; 128+N is "ended by signal N".

/// Every check passed (a run, a cycle series, an MCP call).
pub const EXIT_PASS: i32 = 0;
/// The run failed; for `mcp call`: the tool ran and reported a failure
/// (`isError: true`).
pub const EXIT_FAIL: i32 = 1;
/// Enough instances booted and nothing was left, but a target was missed.
pub const EXIT_PARTIAL: i32 = 2;
/// `mcp`: the server answered with a JSON-RPC error (unknown tool, bad arguments, ...).
pub const EXIT_RPC_ERROR: i32 = 3;
/// `mcp`: transport, protocol or timeout failure: we do not know what the server did.
pub const EXIT_TRANSPORT: i32 = 4;
/// `mcp`: the server declared no `tools` capability: nothing was asked of it.
pub const EXIT_NOT_OFFERED: i32 = 5;
/// `mcp`: the tool requires task-augmented execution (`execution.taskSupport:
/// "required"`), which ukload does not support: it was not called.
pub const EXIT_NEEDS_TASKS: i32 = 6;
/// The command line was wrong (sysexits EX_USAGE).
pub const EXIT_USAGE: i32 = 64;
/// A program the launcher needs is missing (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: i32 = 69;
/// An I/O error (EX_IOERR): the report could not be written, or the CID
/// registry could not be used (read-only, out of descriptors).
pub const EXIT_IOERR: i32 = 74;
/// The CID range has no room right now (EX_TEMPFAIL).
pub const EXIT_TEMPFAIL: i32 = 75;
/// Base of "ended by signal N" (128 + N).
pub const EXIT_SIGNAL_BASE: i32 = 128;
/// After SIGINT (128 + 2); SIGTERM gives 143, SIGHUP 129.
pub const EXIT_SIGINT: i32 = EXIT_SIGNAL_BASE + 2;
